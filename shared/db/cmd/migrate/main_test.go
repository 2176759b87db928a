package main

import (
	"context"
	"testing"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

func TestRun(t *testing.T) {
	pool := dbtest.NewEmpty(t)
	t.Setenv("DATABASE_URL", dbtest.URL(t, pool))
	ctx := context.Background()
	for i := range 2 {
		if err := run(ctx); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		v, err := db.SchemaVersion(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		if v != db.LatestVersion() {
			t.Errorf("run %d: got version %d, want %d", i+1, v, db.LatestVersion())
		}
	}
}
