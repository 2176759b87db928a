package main

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(Config) bool
		wantErr bool
	}{
		{"defaults", nil, nil, func(c Config) bool {
			return c.Port == 8080 && c.BrokerPort == 8081 && c.Seed &&
				c.Overlay == "deploy/overlays/all-in-one" && strings.HasSuffix(c.DeadLetterFile, "dead-letters.jsonl")
		}, false},
		{"environment", nil, map[string]string{"PORT": "9090", "BROKER_PORT": "9091", "SEED_DEMO_DATA": "false", "DEAD_LETTER_FILE": "/x/dl.jsonl"},
			func(c Config) bool {
				return c.Port == 9090 && c.BrokerPort == 9091 && !c.Seed && c.DeadLetterFile == "/x/dl.jsonl"
			}, false},
		{"flags win", []string{"-port", "7070", "-broker-port=7071", "-overlay", "o"}, map[string]string{"PORT": "9090"},
			func(c Config) bool { return c.Port == 7070 && c.BrokerPort == 7071 && c.Overlay == "o" }, false},
		{"same ports", []string{"-port", "8081"}, nil, nil, true},
		{"not a port", nil, map[string]string{"BROKER_PORT": "70000"}, nil, true},
		{"stray argument", []string{"extra"}, nil, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.env
			if env == nil {
				env = map[string]string{}
			}
			c, err := parseConfig(tc.args, env)
			if tc.wantErr {
				if err == nil {
					t.Errorf("got %+v, want an error", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(c) {
				t.Errorf("got %+v", c)
			}
		})
	}
}

func TestDatabaseURLFromLibpqEnvironment(t *testing.T) {
	env := map[string]string{
		"PGHOST": "localhost", "PGPORT": "5433", "PGUSER": "postgres",
		"PGPASSWORD": `it's a \secret`, "PGDATABASE": "postgres", "HOME": "/root",
	}
	if got := databaseURL("postgres://u@h/db", env); got != "postgres://u@h/db" {
		t.Errorf("DATABASE_URL set: got %q, want it unchanged", got)
	}
	url := databaseURL("", env)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatalf("built connection string does not parse: %v", err)
	}
	if cfg.Host != "localhost" || cfg.Port != 5433 || cfg.User != "postgres" || cfg.Password != `it's a \secret` || cfg.Database != "postgres" {
		t.Errorf("parsed %s@%s:%d/%s password %q", cfg.User, cfg.Host, cfg.Port, cfg.Database, cfg.Password)
	}
	desc := describeDatabase(url)
	if desc != "postgres@localhost:5433/postgres" || strings.Contains(desc, "secret") {
		t.Errorf("description %q, want postgres@localhost:5433/postgres and no password", desc)
	}
}
