package function

import (
	"context"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// popularCache keeps popular-tag results per (category, limit) for ttl.
// Concurrent misses for one key share a single load. clear drops every
// entry; a load that started before clear does not refill the cache.
type popularCache struct {
	ttl   time.Duration
	now   func() time.Time
	group singleflight.Group

	mu         sync.Mutex
	generation uint64
	entries    map[string]cacheEntry
}

type cacheEntry struct {
	tags    []TagCount
	expires time.Time
}

func newPopularCache(ttl time.Duration) *popularCache {
	return &popularCache{ttl: ttl, now: time.Now, entries: make(map[string]cacheEntry)}
}

// loader reads popular tags when the cache has none.
type loader func(ctx context.Context, category *string, limit int) ([]TagCount, error)

func (c *popularCache) get(ctx context.Context, category *string, limit int, load loader) ([]TagCount, error) {
	key := strconv.Itoa(limit) + "\x00"
	if category != nil {
		key += "c" + *category
	}
	c.mu.Lock()
	e, ok := c.entries[key]
	gen := c.generation
	c.mu.Unlock()
	if ok && c.now().Before(e.expires) {
		return e.tags, nil
	}
	v, err, _ := c.group.Do(key+"\x00"+strconv.FormatUint(gen, 10), func() (any, error) {
		// Callers that join this load must not lose it when the first
		// one's request ends.
		tags, err := load(context.WithoutCancel(ctx), category, limit)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.generation == gen {
			c.store(key, tags)
		}
		c.mu.Unlock()
		return tags, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]TagCount), nil
}

// maxCacheEntries bounds the cache: the key includes a client-chosen
// category, so without a bound any caller could grow it without end.
const maxCacheEntries = 256

// store adds an entry, first dropping expired ones when the cache is full,
// and everything when that is not enough. c.mu is held.
func (c *popularCache) store(key string, tags []TagCount) {
	if len(c.entries) >= maxCacheEntries {
		now := c.now()
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= maxCacheEntries {
			clear(c.entries)
		}
	}
	c.entries[key] = cacheEntry{tags: tags, expires: c.now().Add(c.ttl)}
}

// clear drops every entry and keeps loads already running from storing.
func (c *popularCache) clear() {
	c.mu.Lock()
	c.generation++
	clear(c.entries)
	c.mu.Unlock()
}
