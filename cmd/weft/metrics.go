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
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	at, stop, err := serveHTTP(ctx, g, addr, "--metrics", "metrics", mux)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(g.stderr, "weft: metrics on http://%s/metrics\n", at)
	return stop, nil
}
