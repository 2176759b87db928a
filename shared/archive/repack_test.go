package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/archive"
)

// homeTree writes a home-like tree with what a real home holds: nested and
// empty directories, relative symlinks, a hardlink, names long enough to
// need PAX headers.
func homeTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	long := strings.Repeat("n", 180)
	write := func(rel, body string, mode os.FileMode) {
		p := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), mode))
	}
	write(".bashrc", "export PS1='$ '\n", 0o644)
	write(".config/app/settings.json", `{"theme":"dark"}`, 0o600)
	write("Documents/notes.txt", strings.Repeat("line of notes\n", 5000), 0o644)
	write("bin/run.sh", "#!/bin/sh\necho hi\n", 0o755)
	write(filepath.Join(long, long+".txt"), "deep and long", 0o644)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "empty", "deeper"), 0o755))
	require.NoError(t, os.Symlink("Documents/notes.txt", filepath.Join(root, "notes")))
	require.NoError(t, os.Symlink("../.bashrc", filepath.Join(root, "bin", "rc")))
	require.NoError(t, os.Symlink(".config", filepath.Join(root, "cfg")))
	require.NoError(t, os.Symlink("does/not/exist", filepath.Join(root, "dangling")))
	require.NoError(t, os.Link(filepath.Join(root, "bin", "run.sh"), filepath.Join(root, "run-again.sh")))
	return root
}

// treeState describes every path under root: type, permissions, content
// hash or link target.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			state[rel] = "link " + target
			return err
		case info.IsDir():
			state[rel] = "dir " + info.Mode().Perm().String()
		default:
			body, err := os.ReadFile(p)
			sum := sha256.Sum256(body)
			state[rel] = "file " + info.Mode().Perm().String() + " " + hex.EncodeToString(sum[:])
			return err
		}
		return nil
	})
	require.NoError(t, err)
	return state
}

func run(t *testing.T, stdin io.Reader, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "%s %v: %s", name, args, stderr.String())
	return out
}

// TestRepackRoundTrip takes a home through GNU tar, Vet, Repack and GNU tar
// again, and checks the result is the same tree, that every entry is counted
// as restored, and that the count ignores what was not restored.
// TestRepackRoundTrip re-packs a home's archive, in each format, and
// extracts it with GNU tar; GNU tar lists the archive first, so it reads
// both formats too.
func TestRepackRoundTrip(t *testing.T) {
	src := homeTree(t)
	plain := run(t, nil, "tar", "-cf", "-", "-C", src, ".")
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) { testRepackRoundTrip(t, src, f.compress(t, plain)) })
	}
}

func testRepackRoundTrip(t *testing.T, src string, data []byte) {
	listed := strings.Count(string(run(t, bytes.NewReader(data), "tar", "-tzf", "-")), "\n")
	want := &archive.Expect{SHA256: sha(data), Entries: int64(listed), Bytes: -1}

	sum, err := archive.Vet(context.Background(), bytes.NewReader(data), archive.Limits{}, nil)
	require.NoError(t, err)
	want.Bytes = sum.Bytes
	_, err = archive.Vet(context.Background(), bytes.NewReader(data), archive.Limits{}, want)
	require.NoError(t, err)

	var packed bytes.Buffer
	rsum, err := archive.Repack(context.Background(), &packed, bytes.NewReader(data), archive.Limits{}, want)
	require.NoError(t, err)
	dst := t.TempDir()
	run(t, bytes.NewReader(packed.Bytes()), "tar", "-xf", "-", "-C", dst)
	assert.Equal(t, treeState(t, src), treeState(t, dst))

	require.NotNil(t, rsum.Restored)
	assert.Equal(t, listed-1, rsum.Restored.Len(), "every entry but the root is restored")

	tests := []struct {
		name   string
		change func(t *testing.T)
		want   int
	}{
		{name: "all present", change: func(*testing.T) {}, want: listed - 1},
		{name: "files the session made meanwhile are not counted", change: func(t *testing.T) {
			require.NoError(t, os.WriteFile(filepath.Join(dst, "new-file"), []byte("x"), 0o644))
		}, want: listed - 1},
		{name: "a missing entry is not counted", change: func(t *testing.T) {
			require.NoError(t, os.Remove(filepath.Join(dst, "notes")))
		}, want: listed - 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.change(t)
			out, err := exec.Command("find", dst, "-print0").Output()
			require.NoError(t, err)
			n, err := rsum.Restored.CountPresent(bytes.NewReader(out))
			require.NoError(t, err)
			assert.Equal(t, tc.want, n)
		})
	}
}

func readNames(t *testing.T, b []byte) ([]*tar.Header, error) {
	t.Helper()
	var hs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hs, nil
		}
		if err != nil {
			return hs, err
		}
		hs = append(hs, h)
	}
}

func TestRepackWritesCheckedEntriesOnly(t *testing.T) {
	tests := []struct {
		name  string
		ents  []ent
		names []string
	}{
		{name: "traversal after a good entry", ents: []ent{dir("./"), file("./a", "1"), file("../evil", "x"), file("b", "2")},
			names: []string{"a"}},
		{name: "escaping link after a good entry", ents: []ent{file("a", "1"), symlink("s", "../.."), file("s/x", "x")},
			names: []string{"a"}},
		{name: "device first", ents: []ent{special("null", tar.TypeChar), file("a", "1")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := archive.Repack(context.Background(), &out, bytes.NewReader(tgz(t, tc.ents...)), archive.Limits{}, nil)
			require.ErrorIs(t, err, archive.ErrRejected)
			hs, _ := readNames(t, out.Bytes())
			var names []string
			for _, h := range hs {
				names = append(names, h.Name)
			}
			assert.Equal(t, tc.names, names)
		})
	}
}

func TestRepackCanonicalEntries(t *testing.T) {
	data := tgz(t, dir("./"), withMode(dir("./sub/"), 0o750), symlink("./l", "sub"), withMode(file("./l/f", "x"), 0o640),
		hardlink("./l/h", "l/f"), symlink("./m", "l/f"))
	var out bytes.Buffer
	sum, err := archive.Repack(context.Background(), &out, bytes.NewReader(data), archive.Limits{}, nil)
	require.NoError(t, err)
	hs, err := readNames(t, out.Bytes())
	require.NoError(t, err)
	type got struct {
		Name, Link string
		Type       byte
		Mode       int64
		Uid, Gid   int
		Uname      string
	}
	var gots []got
	for _, h := range hs {
		gots = append(gots, got{Name: h.Name, Link: h.Linkname, Type: h.Typeflag, Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, Uname: h.Uname})
	}
	assert.Equal(t, []got{
		{Name: "sub/", Type: tar.TypeDir, Mode: 0o750},
		{Name: "l", Link: "sub", Type: tar.TypeSymlink, Mode: 0o777},
		{Name: "sub/f", Type: tar.TypeReg, Mode: 0o640},
		{Name: "sub/h", Link: "sub/f", Type: tar.TypeLink, Mode: 0o644},
		{Name: "m", Link: "l/f", Type: tar.TypeSymlink, Mode: 0o777},
	}, gots, "names through symlinks are written as real paths, the root is left out, owners are dropped")
	assert.Equal(t, 5, sum.Restored.Len())
	for _, name := range []string{"sub", "./sub/", "sub/f", "m"} {
		assert.True(t, sum.Restored.Contains(name), name)
	}
	assert.False(t, sum.Restored.Contains("l/f"), "the name as stored is not what was written")
}
