package main

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
				assert.Error(t, err, "got %+v", c)
				return
			}
			require.NoError(t, err)
			assert.True(t, tc.want(c), "got %+v", c)
		})
	}
}

func TestDatabaseURLFromLibpqEnvironment(t *testing.T) {
	env := map[string]string{
		"PGHOST": "localhost", "PGPORT": "5433", "PGUSER": "postgres",
		"PGPASSWORD": `it's a \secret`, "PGDATABASE": "postgres", "HOME": "/root",
	}
	tests := []struct {
		name, configured string
		want             func(t *testing.T, url string)
	}{
		{"DATABASE_URL is used unchanged", "postgres://u@h/db", func(t *testing.T, url string) {
			assert.Equal(t, "postgres://u@h/db", url)
		}},
		{"PG* variables become a keyword/value string", "", func(t *testing.T, url string) {
			cfg, err := pgx.ParseConfig(url)
			require.NoError(t, err, "built connection string does not parse")
			assert.Equal(t, "localhost", cfg.Host)
			assert.Equal(t, uint16(5433), cfg.Port)
			assert.Equal(t, "postgres", cfg.User)
			assert.Equal(t, `it's a \secret`, cfg.Password)
			assert.Equal(t, "postgres", cfg.Database)
			desc := describeDatabase(url)
			assert.Equal(t, "postgres@localhost:5433/postgres", desc)
			assert.NotContains(t, desc, "secret")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.want(t, databaseURL(tc.configured, env))
		})
	}
}
