package archive

import (
	"archive/tar"
	"path"
	"strings"
)

// Mode bits that are refused: a restored file must never gain privileges.
const (
	modeSetuid = 0o4000
	modeSetgid = 0o2000
	modeSticky = 0o1000
	modePerm   = 0o777
)

// entry is a checked tar entry, named by its real path under the root: the
// path with every directory symlink of earlier entries already followed, so
// writing it never passes through a symlink.
type entry struct {
	// key is the real path relative to the root; "" is the root itself.
	key string
	// link is the hardlink's real target path, or the symlink's target as
	// stored (symlink targets are checked, never rewritten).
	link string
}

// tree models what extracting the entries seen so far creates, as far as the
// link checks need it. It is the kernel's path resolution run against the
// archive instead of a disk.
//
// Only symlinks are remembered. A path not in links is a directory or a
// file, or does not exist yet; for resolution those behave the same, because
// extraction creates missing parents as directories.
//
// Later entries can change how an earlier symlink resolves: `a -> d/..` is
// harmless until `d -> .` makes it the root's parent. So every path that a
// symlink target passes through (not its last element) is recorded in
// through, with what it was then: its symlink target, or "" if it was not a
// symlink. A later entry that would change what such a path is gets refused.
// A legitimate tar of a real tree never does that: it has one entry per path.
type tree struct {
	links   map[string]string
	through map[string]string
}

func newTree() *tree {
	return &tree{links: make(map[string]string), through: make(map[string]string)}
}

// check vets one header and, when it passes, records its effect on the
// tree. It returns the entry as it must be written out.
func (t *tree) check(h *tar.Header) (entry, *Rejection) {
	name := h.Name
	if err := checkName(name); err != "" {
		return entry{}, reject(name, "%s", err)
	}
	if h.Mode&modeSetuid != 0 || h.Mode&modeSetgid != 0 {
		return entry{}, reject(name, "setuid or setgid bit (mode %#o)", h.Mode)
	}
	if h.Mode&modeSticky != 0 {
		return entry{}, reject(name, "sticky bit (mode %#o)", h.Mode)
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, '\x00', tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock:
		return entry{}, reject(name, "device node")
	case tar.TypeFifo:
		return entry{}, reject(name, "FIFO")
	default:
		return entry{}, reject(name, "unsupported entry type %q", h.Typeflag)
	}
	if h.Size < 0 {
		return entry{}, reject(name, "negative size")
	}

	clean := path.Clean(name)
	if clean == "." {
		if h.Typeflag != tar.TypeDir {
			return entry{}, reject(name, "the root must be a directory")
		}
		return entry{key: ""}, nil
	}
	dir, base := path.Split(clean)
	parent, err := t.resolve(nil, dir, true, false)
	if err != "" {
		return entry{}, reject(name, "its directory %s", err)
	}
	key := joinKey(parent, base)

	old, isLink := t.links[key]
	was, traversed := t.through[key]
	isSymlink := h.Typeflag == tar.TypeSymlink

	switch {
	case isLink && !(isSymlink && old == h.Linkname):
		return entry{}, reject(name, "replaces the symlink %s -> %s", key, old)
	case traversed && !isSymlink && was != "":
		return entry{}, reject(name, "replaces a symlink an earlier link resolves through")
	case traversed && isSymlink && was != h.Linkname:
		return entry{}, reject(name, "turns a path an earlier link resolves through into a symlink")
	}

	switch h.Typeflag {
	case tar.TypeSymlink:
		target := h.Linkname
		if e := checkTarget(target); e != "" {
			return entry{}, reject(name, "symlink target %q: %s", target, e)
		}
		if _, e := t.resolve(parent, target, false, true); e != "" {
			return entry{}, reject(name, "symlink target %q %s", target, e)
		}
		// The target may pass through the link's own path: a -> a/..
		if was, ok := t.through[key]; ok && was != target {
			return entry{}, reject(name, "symlink target %q resolves through the link itself", target)
		}
		t.links[key] = target
		return entry{key: key, link: target}, nil
	case tar.TypeLink:
		target := h.Linkname
		if e := checkName(target); e != "" {
			return entry{}, reject(name, "hardlink target %q: %s", target, e)
		}
		tclean := path.Clean(target)
		if tclean == "." {
			return entry{}, reject(name, "hardlink to the root")
		}
		tdir, tbase := path.Split(tclean)
		tparent, e := t.resolve(nil, tdir, true, false)
		if e != "" {
			return entry{}, reject(name, "hardlink target %q %s", target, e)
		}
		tkey := joinKey(tparent, tbase)
		// A hardlink to a symlink is a second symlink whose relative target
		// is read from another directory; it could point anywhere.
		if _, ok := t.links[tkey]; ok {
			return entry{}, reject(name, "hardlink to the symlink %s", tkey)
		}
		if tkey == key {
			return entry{}, reject(name, "hardlink to itself")
		}
		return entry{key: key, link: tkey}, nil
	}
	return entry{key: key}, nil
}

// checkName refuses names that are not plain relative paths. A ".." element
// is refused even where cleaning would remove it ("a/../b"): tar walks it
// literally, and "a" may be a symlink.
func checkName(name string) string {
	switch {
	case name == "":
		return "empty name"
	case len(name) > MaxNameLen:
		return "name longer than 4096 bytes"
	case strings.IndexByte(name, 0) >= 0:
		return "NUL in name"
	case strings.HasPrefix(name, "/"):
		return "absolute path"
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "parent directory reference (..)"
		}
	}
	return ""
}

func checkTarget(target string) string {
	switch {
	case target == "":
		return "empty target"
	case len(target) > MaxNameLen:
		return "target longer than 4096 bytes"
	case strings.IndexByte(target, 0) >= 0:
		return "NUL in target"
	case strings.HasPrefix(target, "/"):
		return "absolute target"
	}
	return ""
}

// resolve walks rel from the real directory base as the kernel would,
// expanding the symlinks recorded so far, and returns the real path reached.
// followLast says whether a symlink in the last element is followed. record
// notes every path passed through (every element but the last) in t.through.
// A non-empty second result says why the walk failed: it left the root, or
// looped.
func (t *tree) resolve(base []string, rel string, followLast, record bool) ([]string, string) {
	cur := append([]string(nil), base...)
	rest := splitPath(rel)
	hops := 0
	for len(rest) > 0 {
		el := rest[0]
		rest = rest[1:]
		last := len(rest) == 0
		switch el {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return nil, "leaves the root"
			}
			cur = cur[:len(cur)-1]
			continue
		}
		next := joinKey(cur, el)
		target, isLink := t.links[next]
		if record && !last {
			if _, seen := t.through[next]; !seen {
				t.through[next] = target
			}
		}
		if isLink && (followLast || !last) {
			hops++
			if hops > maxHops {
				return nil, "has too many levels of symlinks"
			}
			rest = append(splitPath(target), rest...)
			continue
		}
		cur = append(cur, el)
	}
	return cur, ""
}

func splitPath(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

func joinKey(dir []string, base string) string {
	if len(dir) == 0 {
		return base
	}
	return strings.Join(dir, "/") + "/" + base
}
