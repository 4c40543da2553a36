package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// listenHTTP listens on addr, the value of flag (named in its error).
func listenHTTP(addr, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("%s %s: %w", flag, addr, err))
	}
	return ln, nil
}

// serveHTTP serves h on ln until the returned stop is called, which shuts
// the server down and waits for it. A server that fails after it started
// says so on stderr, naming what.
func serveHTTP(ctx context.Context, g *globals, ln net.Listener, what string, h http.Handler) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(g.stderr, "weft: %s: %v\n", what, err)
		}
	})
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		wg.Wait()
	}
}
