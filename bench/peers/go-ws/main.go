// go-ws: Go gorilla/websocket echo peer for bench/ws-peers.sh, with the
// Upgrader's defaults (the hijacked net/http buffers are reused), as the
// package's echo example is written.
//
// GET / -> "ok"; GET /ws -> upgrade; every message is echoed (pings are
// answered by gorilla's default ping handler). GET /ws/chat -> upgrade; a
// text message from one goes to every /ws/chat connection, as gorilla's chat
// example does it (a registry of clients, and per client a buffered send
// channel of 256 messages drained by its own writer goroutine: gorilla
// allows one writer per connection).
//
// Usage: go-ws [-listen ADDR]   (default 127.0.0.1:8091)
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build (Debian's
// golang-github-gorilla-websocket-dev). GOMAXPROCS from the environment.
package main

import (
	"flag"
	"log"
	"net/http"
	"sync"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{}

func ws(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

// chat is the registry of /ws/chat clients (each one's send channel).
var chat = struct {
	sync.Mutex
	clients map[chan []byte]struct{}
}{clients: map[chan []byte]struct{}{}}

func chatWS(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	send := make(chan []byte, 256)
	chat.Lock()
	chat.clients[send] = struct{}{}
	chat.Unlock()
	go func() { // the writer
		for msg := range send {
			if c.WriteMessage(websocket.TextMessage, msg) != nil {
				break
			}
		}
		c.Close()
	}()
	defer func() {
		chat.Lock()
		delete(chat.clients, send)
		chat.Unlock()
		close(send)
	}()
	for {
		_, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		chat.Lock()
		for client := range chat.clients {
			select {
			case client <- msg:
			default: // a client that does not keep up misses it
			}
		}
		chat.Unlock()
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8091", "address to listen on")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	http.HandleFunc("/ws", ws)
	http.HandleFunc("/ws/chat", chatWS)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
