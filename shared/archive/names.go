package archive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"path"
	"slices"
	"strings"
)

// NameSet is the set of names a Repack wrote, kept as 64-bit hashes (eight
// bytes a name) so that a home of a million files costs 8 MB, not the names.
// The hash is keyed per process, so no archive can be shaped to collide.
type NameSet struct {
	seed maphash.Seed
	sums []uint64 // sorted, unique
}

// Len is the number of distinct names.
func (s *NameSet) Len() int { return len(s.sums) }

func (s *NameSet) index(name string) (int, bool) {
	return slices.BinarySearch(s.sums, maphash.String(s.seed, name))
}

// Contains says whether name (a path relative to the root, in any of the
// forms "a/b", "./a/b" or "a/b/") was written.
func (s *NameSet) Contains(name string) bool {
	_, ok := s.index(normalize(name))
	return ok
}

// CountPresent reads a NUL-separated list of paths as `find ROOT -print0`
// prints it — ROOT itself first, then every path under it as ROOT/… — and
// returns how many distinct names of the set are among them. The root is
// taken from the list, so ROOT may be spelt any way. Paths not in the set
// (files the session created meanwhile) are ignored.
func (s *NameSet) CountPresent(r io.Reader) (int, error) {
	found := make([]uint64, (len(s.sums)+63)/64)
	present := 0
	br := bufio.NewReaderSize(r, 64<<10)
	var root string
	first := true
	for {
		line, err := br.ReadSlice(0)
		if errors.Is(err, bufio.ErrBufferFull) {
			// A path longer than the buffer: never one of ours, since names
			// are capped well below it. Skip to its end.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice(0)
			}
			if err == nil {
				continue
			}
		}
		if len(line) > 0 && err == nil {
			p := string(bytes.TrimSuffix(line, []byte{0}))
			switch {
			case first:
				root = strings.TrimSuffix(p, "/") + "/"
				first = false
			case strings.HasPrefix(p, root):
				name := normalize(p[len(root):])
				if i, ok := s.index(name); ok && found[i/64]&(1<<(i%64)) == 0 {
					found[i/64] |= 1 << (i % 64)
					present++
				}
			}
		}
		if err == io.EOF {
			if len(line) > 0 {
				return present, fmt.Errorf("count present: list does not end with NUL")
			}
			return present, nil
		}
		if err != nil {
			return present, fmt.Errorf("count present: %w", err)
		}
	}
}

func normalize(name string) string {
	c := path.Clean(name)
	if c == "." {
		return ""
	}
	if len(c) > 2 && c[:2] == "./" {
		return c[2:]
	}
	return c
}

type nameSetBuilder struct {
	seed maphash.Seed
	sums []uint64
}

func newNameSetBuilder() *nameSetBuilder {
	return &nameSetBuilder{seed: maphash.MakeSeed()}
}

func (b *nameSetBuilder) add(key string) {
	b.sums = append(b.sums, maphash.String(b.seed, key))
}

func (b *nameSetBuilder) build() *NameSet {
	slices.Sort(b.sums)
	return &NameSet{seed: b.seed, sums: slices.Clip(slices.Compact(b.sums))}
}
