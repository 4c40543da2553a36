package main

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/metrics"
)

// fleetCollector returns the collector of the fleet gauges (jobs, agents,
// WIP and waiting runs) read from js on each scrape, each read bounded
// by metrics.FleetTimeout.
func fleetCollector(js jetstream.JetStream) prometheus.Collector {
	return metrics.NewFleet(func(ctx context.Context) (metrics.Fleet, error) {
		s, err := client.FleetStats(ctx, js)
		if err != nil {
			return metrics.Fleet{}, err
		}
		return s.Metrics(), nil
	}, metrics.FleetTimeout)
}
