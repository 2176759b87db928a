package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/caarlos0/env/v11"
)

// Config is the runner's configuration: environment variables, each of which
// a flag of the same meaning overrides.
type Config struct {
	// Port is where the all-in-one function listens on 127.0.0.1; 0 picks a
	// free port.
	Port int `env:"PORT" envDefault:"8080"`
	// BrokerPort serves the broker ingress, the issuer's JWKS and the
	// dead-letter log on 127.0.0.1; 0 picks a free port.
	BrokerPort int `env:"BROKER_PORT" envDefault:"8081"`
	// DatabaseURL is the database to migrate and serve. Unset, libpq's PG*
	// variables name it, as pg_virtualenv sets them.
	DatabaseURL string `env:"DATABASE_URL"`
	// Overlay is the kustomize overlay whose Broker, Triggers and PingSources
	// run in process. A relative path is looked up from the working directory
	// and then from each parent, so the runner works from anywhere in the
	// repository.
	Overlay string `env:"DEPLOY_OVERLAY" envDefault:"deploy/overlays/all-in-one"`
	// DeadLetterFile receives one JSON line per dead letter. Empty means
	// $TMPDIR/streamspace-local/dead-letters.jsonl.
	DeadLetterFile string `env:"DEAD_LETTER_FILE"`
	// Seed adds the demo session and catalog templates that the printed curl
	// commands show; rows that exist are left alone.
	Seed bool `env:"SEED_DEMO_DATA" envDefault:"true"`
	// Login starts Ory Hydra, when scripts/tools has built it, as the
	// OpenID provider of the auth function, with a demo client and users,
	// so its login works in a browser on this machine. Hydra's database is
	// created on the same PostgreSQL server and dropped on stop.
	Login bool `env:"LOCAL_OIDC_LOGIN" envDefault:"true"`
	// Kube gives the autoscale function a Kubernetes API: the cluster
	// KUBECONFIG names, else a kube-apiserver of its own with a demo
	// Deployment when scripts/tools has built one; otherwise the banner
	// says autoscaling is off and why. That local API server also serves
	// the demo session's pod to snapshot and restore, with a local MinIO,
	// when scripts/tools has built MinIO.
	Kube bool `env:"LOCAL_KUBE" envDefault:"true"`
}

// parseConfig reads environ, then args.
func parseConfig(args []string, environ map[string]string) (Config, error) {
	var cfg Config
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: environ}); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	fs := flag.NewFlagSet("streamspace-local", flag.ContinueOnError)
	fs.IntVar(&cfg.Port, "port", cfg.Port, "function port (PORT)")
	fs.IntVar(&cfg.BrokerPort, "broker-port", cfg.BrokerPort, "broker, JWKS and dead-letter port (BROKER_PORT)")
	fs.StringVar(&cfg.Overlay, "overlay", cfg.Overlay, "kustomize overlay with the Broker, Triggers and PingSources (DEPLOY_OVERLAY)")
	fs.StringVar(&cfg.DeadLetterFile, "dead-letters", cfg.DeadLetterFile, "file that dead letters are appended to (DEAD_LETTER_FILE)")
	fs.BoolVar(&cfg.Seed, "seed", cfg.Seed, "add the demo rows the printed curl commands use (SEED_DEMO_DATA)")
	fs.BoolVar(&cfg.Login, "login", cfg.Login, "start Ory Hydra, when built, for the auth function's login (LOCAL_OIDC_LOGIN)")
	fs.BoolVar(&cfg.Kube, "kube", cfg.Kube, "run autoscale against KUBECONFIG or a local kube-apiserver (LOCAL_KUBE)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.DeadLetterFile == "" {
		cfg.DeadLetterFile = filepath.Join(os.TempDir(), "streamspace-local", "dead-letters.jsonl")
	}
	for name, port := range map[string]int{"PORT": cfg.Port, "BROKER_PORT": cfg.BrokerPort} {
		if port < 0 || port > 65535 {
			return cfg, fmt.Errorf("config: %s %d is not a port", name, port)
		}
	}
	if cfg.Port != 0 && cfg.Port == cfg.BrokerPort {
		return cfg, errors.New("config: PORT and BROKER_PORT must differ")
	}
	return cfg, nil
}
