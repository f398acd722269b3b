// go-ws: Go gorilla/websocket echo peer for bench/ws-peers.sh, with the
// Upgrader's defaults (the hijacked net/http buffers are reused), as the
// package's echo example is written.
//
// GET / -> "ok"; GET /ws -> upgrade; every message is echoed (pings are
// answered by gorilla's default ping handler).
//
// Usage: go-ws [-listen ADDR]   (default 127.0.0.1:8091)
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build (Debian's
// golang-github-gorilla-websocket-dev). GOMAXPROCS from the environment.
package main

import (
	"flag"
	"log"
	"net/http"

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

func main() {
	listen := flag.String("listen", "127.0.0.1:8091", "address to listen on")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	http.HandleFunc("/ws", ws)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
