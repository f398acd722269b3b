// go-reuseport: Go net/http "Hello, World!" peer for bench/million.sh, spread
// over several processes that share one port with SO_REUSEPORT (the open-file
// limit here is 20,000 per process, so one process cannot hold a million
// connections). Standard library only.
//
// Usage: go-reuseport [-listen ADDR] [-procs P] [-idle DURATION]
//
// The process started is a supervisor: it starts P copies of itself (worker
// processes, GOMAXPROCS=1 each unless GOMAXPROCS is set), each binding its own
// SO_REUSEPORT listener on ADDR, forwards SIGTERM/SIGINT to them, and exits
// when they all have. Workers die with the supervisor (PR_SET_PDEATHSIG).
// GET / (any path) -> "Hello, World!" (text/plain). IdleTimeout: -idle (300s).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const childEnv = "GO_REUSEPORT_WORKER"

// SO_REUSEPORT on Linux (x86, arm, arm64, riscv; the syscall package does not
// export it and golang.org/x/sys is not the standard library).
const soReuseport = 0xf

var body = []byte("Hello, World!")

func hello(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{"13"}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

func reuseport(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReuseport, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func worker(listen string, idle time.Duration) {
	lc := net.ListenConfig{Control: reuseport}
	ln, err := lc.Listen(context.Background(), "tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(hello),
		IdleTimeout:       idle,
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "listen address")
	procs := flag.Int("procs", 1, "worker processes sharing the port (SO_REUSEPORT)")
	idle := flag.Duration("idle", 300*time.Second, "keep-alive idle timeout (http.Server.IdleTimeout)")
	flag.Parse()
	if os.Getenv(childEnv) != "" {
		worker(*listen, *idle)
		return
	}
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	env := os.Environ()
	env = append(env, childEnv+"=1")
	if os.Getenv("GOMAXPROCS") == "" {
		env = append(env, "GOMAXPROCS=1")
	}
	// Catch signals before starting workers, so none is lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	cmds := make([]*exec.Cmd, 0, *procs)
	for i := 0; i < *procs; i++ {
		cmd := exec.Command(self, "-listen", *listen, "-idle", idle.String())
		cmd.Env = append(env, "GO_REUSEPORT_INDEX="+strconv.Itoa(i))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			for _, c := range cmds {
				c.Process.Kill()
			}
			log.Fatal(err)
		}
		fmt.Printf("worker process %d pid %d\n", i, cmd.Process.Pid)
		cmds = append(cmds, cmd)
	}
	fmt.Printf("go-reuseport serving on http://%s (%d worker processes; supervisor pid %d)\n",
		*listen, *procs, os.Getpid())
	var wg sync.WaitGroup
	exited := make(chan struct{})
	for _, c := range cmds {
		wg.Add(1)
		go func(c *exec.Cmd) { defer wg.Done(); c.Wait() }(c)
	}
	go func() { wg.Wait(); close(exited) }()
	select {
	case s := <-sig:
		for _, c := range cmds {
			c.Process.Signal(s)
		}
		<-exited
	case <-exited:
	}
	fmt.Printf("go-reuseport stopped: %d worker processes\n", *procs)
}
