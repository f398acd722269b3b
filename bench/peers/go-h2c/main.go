// go-h2c: Go net/http peer serving HTTP/1.1 and cleartext HTTP/2 (h2c, prior
// knowledge or Upgrade) through golang.org/x/net/http2/h2c, for
// bench/attack-memory.sh's HTTP/2 attacks (Go 1.19's net/http speaks h2 only
// over TLS). The handlers are go-hello's: GET / -> "Hello, World!"; POST
// /echo -> the body, read whole first (io.ReadAll), then written back.
// http2.Server{} with its defaults (250 concurrent streams, 1 MiB upload
// buffer per stream and per connection, 1 MiB header list).
//
// Usage: go-h2c [-listen ADDR]   (default 127.0.0.1:8094)
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build (Debian's
// golang-golang-x-net-dev). GOMAXPROCS from the environment.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8094", "address to listen on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		w.Write([]byte("Hello, World!"))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header()["Content-Type"] = []string{"application/octet-stream"}
		w.Write(b)
	})
	srv := &http.Server{Addr: *listen, Handler: h2c.NewHandler(mux, &http2.Server{})}
	log.Fatal(srv.ListenAndServe())
}
