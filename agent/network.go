package agent

import (
	"context"
	"fmt"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/stagenet"
)

// Stage networks (Config.StageNetwork).
const (
	// NetworkHost runs stages in the agent's network.
	NetworkHost = "host"
	// NetworkIsolated gives each stage a network of its own.
	NetworkIsolated = "isolated"
)

// checkStageNetwork validates Config.StageNetwork, defaulting it.
func checkStageNetwork(cfg *Config) error {
	switch cfg.StageNetwork {
	case "":
		cfg.StageNetwork = NetworkHost
	case NetworkHost, NetworkIsolated:
	default:
		return fmt.Errorf("%w: stage network %q is not host or isolated", ErrInvalidConfig, cfg.StageNetwork)
	}
	return nil
}

// setupNetworks readies isolated stage networks when the agent isolates
// stages.
func (a *Agent) setupNetworks(ctx context.Context) error {
	if a.cfg.StageNetwork != NetworkIsolated {
		return nil
	}
	m, err := stagenet.Setup(ctx, stagenet.Config{Subnet: a.cfg.StageSubnet, Logger: a.log})
	if err != nil {
		return fmt.Errorf("agent: isolated stage networks: %w (run stages in the agent's network with --stage-network host)", err)
	}
	a.nets = m
	return nil
}

// stageNet opens the network a job's stage runs in: one of its own when
// the agent isolates stages, unless the stage asks for the host's (nil).
func (a *Agent) stageNet(ctx context.Context, j *job) (*stagenet.Net, error) {
	if a.nets == nil || j.Stage.Network == pipeline.NetworkHost {
		return nil, nil
	}
	return a.nets.Open(ctx)
}
