// go-hello: Go net/http "Hello, World!" peer for the megaconn benchmarks.
//
// GET / -> "Hello, World!" (text/plain); POST /echo -> echoes the body.
//
// Usage: go-hello [-listen ADDR]   (default $LISTEN or 127.0.0.1:8081)
// Parallelism comes from GOMAXPROCS in the environment (the scripts set 1).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

var body = []byte("Hello, World!")

func hello(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{"13"}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// echo answers POST /echo with the request body (used by idle-memory.sh's
// 4 KiB phase, like megaconn's demo app).
func echo(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header()["Content-Type"] = []string{"application/octet-stream"}
	w.Write(b)
}

func main() {
	def := os.Getenv("LISTEN")
	if def == "" {
		def = "127.0.0.1:8081"
	}
	listen := flag.String("listen", def, "listen address")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/", hello)
	mux.HandleFunc("/echo", echo)
	srv := &http.Server{Handler: mux}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())

	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Shutdown(context.Background())
		close(done)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}
