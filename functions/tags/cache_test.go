package function

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestPopularCacheIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newPopularCache(time.Minute)
	c.now = func() time.Time { return now }
	loads := 0
	load := func(context.Context, *string, int) ([]TagCount, error) {
		loads++
		return []TagCount{{"t", 1}}, nil
	}
	for i := range 3 * maxCacheEntries {
		category := fmt.Sprintf("c%d", i)
		if _, err := c.get(context.Background(), &category, 10, load); err != nil {
			t.Fatal(err)
		}
		if n := len(c.entries); n > maxCacheEntries {
			t.Fatalf("%d entries after %d categories, want at most %d", n, i+1, maxCacheEntries)
		}
	}

	// A hit is served from the cache until it expires.
	category := "hot"
	c.get(context.Background(), &category, 10, load)
	before := loads
	c.get(context.Background(), &category, 10, load)
	if loads != before {
		t.Errorf("a fresh entry was loaded again")
	}
	now = now.Add(2 * time.Minute)
	c.get(context.Background(), &category, 10, load)
	if loads != before+1 {
		t.Errorf("an expired entry was served from the cache")
	}
}
