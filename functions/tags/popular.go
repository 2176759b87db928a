package function

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/singleflight"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/validate"
)

// Limits of GET /api/v1/search/filters/tags.
const (
	DefaultPopularLimit = 50
	MaxPopularLimit     = 200
	maxCategoryLength   = 100
)

// TagCount is one tag and the number of catalog templates carrying it.
type TagCount struct {
	Tag   string `json:"tag"`
	Count int64  `json:"count"`
}

// The popular-tag queries read catalog_tag_counts, which triggers on
// catalog_templates keep exact (migration 002): a template counts once per
// distinct string tag; null, non-array and non-string tags are skipped.
const (
	popularSQL = `
		select tag, sum(templates)::bigint as n
		from catalog_tag_counts
		group by tag
		order by n desc, tag
		limit $1`
	popularInCategorySQL = `
		select tag, templates
		from catalog_tag_counts
		where category = $1 and templates > 0
		order by templates desc, tag
		limit $2`
)

// PopularTags returns the most used catalog tags, optionally in one category.
func (s *Store) PopularTags(ctx context.Context, category *string, limit int) ([]TagCount, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if category == nil {
		rows, err = s.Pool.Query(ctx, popularSQL, limit)
	} else {
		rows, err = s.Pool.Query(ctx, popularInCategorySQL, *category, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("popular tags: %w", db.Classify(err))
	}
	defer rows.Close()
	out := make([]TagCount, 0, limit)
	for rows.Next() {
		var tc TagCount
		if err := rows.Scan(&tc.Tag, &tc.Count); err != nil {
			return nil, fmt.Errorf("popular tags: %w", db.Classify(err))
		}
		out = append(out, tc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("popular tags: %w", db.Classify(err))
	}
	return out, nil
}

func parsePopularQuery(r *http.Request) (category *string, limit int, err error) {
	q := r.URL.Query()
	if limit, err = validate.Limit(q, DefaultPopularLimit, MaxPopularLimit); err != nil {
		return nil, 0, err
	}
	if q.Has("category") {
		c := q.Get("category")
		if err := validate.Text("category", c, maxCategoryLength); err != nil {
			return nil, 0, err
		}
		category = &c
	}
	return category, limit, nil
}

func (f *Function) popularTags(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
	category, limit, err := parsePopularQuery(r)
	if err != nil {
		return err
	}
	tags, err := f.cache.get(r.Context(), category, limit, f.store.PopularTags)
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, tags)
	return nil
}

// popularCache keeps popular-tag results per (category, limit) for ttl.
// Concurrent misses for one key share a single query. clear drops every
// entry; a query that started before clear does not refill the cache.
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

func (c *popularCache) clear() {
	c.mu.Lock()
	c.generation++
	clear(c.entries)
	c.mu.Unlock()
}
