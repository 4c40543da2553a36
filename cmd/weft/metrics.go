package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves reg's metrics on http://addr/metrics until the
// returned stop is called.
func serveMetrics(ctx context.Context, g *globals, reg *prometheus.Registry, addr string) (stop func(), err error) {
	ln, err := listenHTTP(addr, "--metrics")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	fmt.Fprintf(g.stderr, "weft: metrics on http://%s/metrics\n", ln.Addr())
	return serveHTTP(ctx, g, ln, "metrics", mux), nil
}
