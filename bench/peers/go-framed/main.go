// go-framed: the classic Go framed TCP server, a peer for bench/framed.sh.
//
// One goroutine per connection, a bufio.Reader each, a 4-byte big-endian
// length header read with io.ReadFull, then the body with io.ReadFull (as
// the issue describes the usual design). "PING" is answered "PONG";
// "PUB * <text>" broadcasts <text> to every connection: the frame is
// encoded once and written to each connection under its write lock (one
// goroutine per connection, no writer goroutine, the cheaper variant for
// memory). Any other frame is echoed.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"flag"
	"io"
	"log"
	"net"
	"sync"
)

const maxFrame = 64 * 1024

type conn struct {
	c  net.Conn
	mu sync.Mutex
}

var (
	mu    sync.Mutex
	conns = map[*conn]struct{}{}
)

func frame(body []byte) []byte {
	out := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(out, uint32(len(body)))
	copy(out[4:], body)
	return out
}

func (k *conn) write(b []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, err := k.c.Write(b)
	return err
}

func broadcast(body []byte) {
	out := frame(body)
	mu.Lock()
	all := make([]*conn, 0, len(conns))
	for k := range conns {
		all = append(all, k)
	}
	mu.Unlock()
	for _, k := range all {
		_ = k.write(out)
	}
}

func serve(c net.Conn) {
	k := &conn{c: c}
	mu.Lock()
	conns[k] = struct{}{}
	mu.Unlock()
	defer func() {
		mu.Lock()
		delete(conns, k)
		mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	var head [4]byte
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(head[:])
		if n > maxFrame {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		switch {
		case bytes.Equal(body, []byte("PING")):
			if k.write(frame([]byte("PONG"))) != nil {
				return
			}
		case bytes.HasPrefix(body, []byte("PUB * ")):
			broadcast(body[6:])
		default:
			if k.write(frame(body)) != nil {
				return
			}
		}
	}
}

func main() {
	addr := flag.String("listen", "127.0.0.1:7000", "address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("go-framed listening on %s", *addr)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Print(err)
			continue
		}
		go serve(c)
	}
}
