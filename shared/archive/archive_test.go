package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/archive"
)

func TestVetRejects(t *testing.T) {
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) { testVetRejects(t, f.tgz) })
	}
}

func testVetRejects(t *testing.T, tgz func(testing.TB, ...ent) []byte) {
	good := tgz(t, dir("./"), file("./a.txt", "hello"))
	long := strings.Repeat("x", 5000)
	tests := []struct {
		name   string
		data   []byte
		lim    archive.Limits
		want   *archive.Expect
		entry  string // the entry the rejection names ("" for the stream)
		reason string // a part of the rejection's reason
		over   error  // ErrTooManyEntries or ErrTooLarge for a cap's rejection
	}{
		{name: "traversal", data: tgz(t, dir("./"), file("../evil", "x")),
			entry: "../evil", reason: "parent directory reference"},
		{name: "traversal inside a path", data: tgz(t, dir("./"), dir("./a/"), file("a/../../evil", "x")),
			entry: "a/../../evil", reason: "parent directory reference"},
		{name: "dot-dot that cleaning would hide", data: tgz(t, symlink("l", "sub/deep"), file("l/../x", "x")),
			entry: "l/../x", reason: "parent directory reference"},
		{name: "absolute path", data: tgz(t, file("/etc/passwd", "root::0:0")),
			entry: "/etc/passwd", reason: "absolute path"},
		{name: "symlink escape", data: tgz(t, dir("./"), symlink("./evil", "../../etc")),
			entry: "./evil", reason: "leaves the root"},
		{name: "absolute symlink target", data: tgz(t, symlink("etc", "/etc")),
			entry: "etc", reason: "absolute target"},
		{name: "symlink escape from a subdirectory", data: tgz(t, dir("a/"), dir("a/b/"), symlink("a/b/up", "../../..")),
			entry: "a/b/up", reason: "leaves the root"},
		{name: "two-link chain: later link turns an earlier one outward",
			data:  tgz(t, symlink("a", "d/.."), symlink("d", ".")),
			entry: "d", reason: "earlier link resolves through"},
		{name: "two-link chain: link placed through a link to the root",
			data:  tgz(t, symlink("a", "."), symlink("a/b", "..")),
			entry: "a/b", reason: "leaves the root"},
		{name: "three-link chain", data: tgz(t, symlink("x", "y/z/.."), symlink("y", "."), symlink("z", "..")),
			entry: "y", reason: "earlier link resolves through"},
		{name: "link through itself", data: tgz(t, symlink("a", "a/..")),
			entry: "a", reason: "through the link itself"},
		{name: "directory replaces a link another link resolves through",
			data:  tgz(t, dir("q/"), dir("q/r/"), symlink("p", "q/r"), symlink("z", "p/../.."), dir("p/")),
			entry: "p/", reason: "replaces the symlink"},
		{name: "file written through a link replaced later", data: tgz(t, symlink("l", "sub"), file("l", "x")),
			entry: "l", reason: "replaces the symlink"},
		{name: "symlink loop", data: tgz(t, symlink("a", "b"), symlink("b", "a"), file("a/x", "x")),
			entry: "a/x", reason: "too many levels of symlinks"},
		{name: "hardlink to outside", data: tgz(t, dir("./"), hardlink("./h", "../etc/shadow")),
			entry: "./h", reason: "parent directory reference"},
		{name: "hardlink to an absolute path", data: tgz(t, hardlink("h", "/etc/shadow")),
			entry: "h", reason: "absolute path"},
		{name: "hardlink through a link to outside the directory", data: tgz(t, symlink("l", "."), hardlink("h", "l/../x")),
			entry: "h", reason: "parent directory reference"},
		{name: "hardlink to a symlink moves its target", data: tgz(t, dir("d/"), symlink("d/s", ".."), hardlink("h", "d/s")),
			entry: "h", reason: "hardlink to the symlink"},
		{name: "hardlink to the root", data: tgz(t, hardlink("h", "./")),
			entry: "h", reason: "hardlink to the root"},
		{name: "character device", data: tgz(t, dir("./"), special("./null", tar.TypeChar)),
			entry: "./null", reason: "device node"},
		{name: "block device", data: tgz(t, special("sda", tar.TypeBlock)),
			entry: "sda", reason: "device node"},
		{name: "FIFO", data: tgz(t, special("pipe", tar.TypeFifo)),
			entry: "pipe", reason: "FIFO"},
		{name: "setuid file", data: tgz(t, withMode(file("./su", "#!/bin/sh"), 0o4755)),
			entry: "./su", reason: "setuid or setgid"},
		{name: "setgid directory", data: tgz(t, withMode(dir("shared/"), 0o2775)),
			entry: "shared/", reason: "setuid or setgid"},
		{name: "sticky bit", data: tgz(t, withMode(dir("tmp/"), 0o1777)),
			entry: "tmp/", reason: "sticky bit"},
		{name: "root that is not a directory", data: tgz(t, file(".", "x")),
			entry: ".", reason: "root must be a directory"},
		{name: "over-long name", data: tgz(t, file(long, "x")),
			entry: long, reason: "longer than 4096"},
		{name: "entry cap", data: tgz(t, dir("./"), file("a", "1"), file("b", "2")), lim: archive.Limits{MaxEntries: 2},
			reason: "more than 2 entries", over: archive.ErrTooManyEntries},
		{name: "byte cap", data: tgz(t, file("a", "123"), file("b", "456")), lim: archive.Limits{MaxBytes: 5},
			entry: "b", reason: "exceed 5 bytes", over: archive.ErrTooLarge},
		{name: "truncated gzip trailer", data: good[:len(good)-4], reason: "truncated"},
		{name: "truncated in the middle", data: good[:len(good)/2], reason: "truncated"},
		{name: "empty stream", data: nil, reason: "truncated"},
		{name: "not gzip", data: []byte("plain text, not an archive"), reason: "gzip header"},
		{name: "trailing garbage", data: append(append([]byte(nil), good...), "garbage after the end"...),
			reason: "trailing garbage"},
		{name: "checksum mismatch", data: good, want: &archive.Expect{SHA256: sha([]byte("another object")), Entries: 2, Bytes: 5},
			reason: "does not match the manifest"},
		{name: "entry count mismatch", data: good, want: &archive.Expect{SHA256: sha(good), Entries: 3, Bytes: 5},
			reason: "2 entries, the manifest says 3"},
		{name: "content size mismatch", data: good, want: &archive.Expect{SHA256: sha(good), Entries: 2, Bytes: 6},
			reason: "5 bytes, the manifest says 6"},
		{name: "more bytes than the manifest says", data: good, want: &archive.Expect{SHA256: sha(good), Entries: 2, Bytes: 4},
			entry: "./a.txt", reason: "exceed 4 bytes", over: archive.ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := archive.Vet(context.Background(), bytes.NewReader(tc.data), tc.lim, tc.want)
			require.Error(t, err)
			assert.ErrorIs(t, err, archive.ErrRejected)
			var rej *archive.Rejection
			require.ErrorAs(t, err, &rej)
			assert.Equal(t, tc.entry, rej.Entry, "rejected entry")
			assert.Contains(t, rej.Reason, tc.reason)
			for _, cap := range []error{archive.ErrTooManyEntries, archive.ErrTooLarge} {
				if cap == tc.over {
					assert.ErrorIs(t, err, cap)
				} else {
					assert.NotErrorIs(t, err, cap)
				}
			}
		})
	}
}

// TestVetStopsStreamedBombs feeds archives far too large to build in memory
// through a pipe, and checks that the caps stop reading them early: the
// generator is never allowed much further than the cap.
func TestVetStopsStreamedBombs(t *testing.T) {
	tests := []struct {
		name        string
		lim         archive.Limits
		want        *archive.Expect
		gen         func(tw *tar.Writer) error
		reason      string
		over        error // the cap's sentinel
		maxProduced int64 // uncompressed bytes the generator may get out before Vet stops it
	}{
		{
			name: "one 10 GB file of zeros", lim: archive.Limits{MaxBytes: 1 << 30},
			gen: func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "./zeros", Mode: 0o644, Size: 10 << 30, Typeflag: tar.TypeReg}); err != nil {
					return err
				}
				return writeZeros(tw, 10<<30)
			},
			reason: "exceed 1073741824 bytes", over: archive.ErrTooLarge, maxProduced: 64 << 20,
		},
		{
			name: "one 10 GB file of zeros behind a manifest of 1 MiB", want: &archive.Expect{Entries: 1, Bytes: 1 << 20},
			gen: func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Name: "./zeros", Mode: 0o644, Size: 10 << 30, Typeflag: tar.TypeReg}); err != nil {
					return err
				}
				return writeZeros(tw, 10<<30)
			},
			reason: "exceed 1048576 bytes", over: archive.ErrTooLarge, maxProduced: 64 << 20,
		},
		{
			name: "10 GB of zeros in 1 MiB files", lim: archive.Limits{MaxBytes: 256 << 20},
			gen: func(tw *tar.Writer) error {
				for i := range 10 << 10 {
					if err := tw.WriteHeader(&tar.Header{Name: "z/" + strings.Repeat("0", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i),
						Mode: 0o644, Size: 1 << 20, Typeflag: tar.TypeReg}); err != nil {
						return err
					}
					if err := writeZeros(tw, 1<<20); err != nil {
						return err
					}
				}
				return nil
			},
			reason: "exceed 268435456 bytes", over: archive.ErrTooLarge, maxProduced: 320 << 20,
		},
		{
			name: "1,000,000 tiny entries", lim: archive.Limits{MaxEntries: 250_000},
			gen: func(tw *tar.Writer) error {
				for i := range 1_000_000 {
					if err := tw.WriteHeader(&tar.Header{Name: "f" + strconv.Itoa(i), Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
						return err
					}
				}
				return nil
			},
			reason: "more than 250000 entries", over: archive.ErrTooManyEntries, maxProduced: 300_000 * 512,
		},
	}
	for _, f := range formats {
		for _, tc := range tests {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				g := generate(f, tc.gen)
				_, err := archive.Vet(context.Background(), g.r, tc.lim, tc.want)
				produced := g.stop()
				require.ErrorIs(t, err, archive.ErrRejected)
				assert.Contains(t, err.Error(), tc.reason)
				assert.ErrorIs(t, err, tc.over, "the cap is named")
				assert.LessOrEqual(t, produced, tc.maxProduced, "bytes generated before the cap stopped the read")
			})
		}
	}
}

func TestVetAccepts(t *testing.T) {
	longDir := "./" + strings.Repeat("d", 200) + "/"
	longFile := longDir + strings.Repeat("f", 300) + ".txt"
	tests := []struct {
		name    string
		ents    []ent
		entries int64
		bytes   int64
	}{
		{name: "files and directories", ents: []ent{dir("./"), dir("./a/"), file("./a/x", "hello"), file("./b", "")},
			entries: 4, bytes: 5},
		{name: "empty directories", ents: []ent{dir("./"), dir("./empty/"), dir("./empty/deeper/")}, entries: 3},
		{name: "symlinks inside the root", ents: []ent{dir("./"), dir("./a/"), dir("./a/b/"),
			symlink("./a/b/up", "../../c"), symlink("./top", "a/b"), symlink("./dangling", "nowhere/yet"),
			symlink("./self-dir", "."), symlink("./a/b/back", "..")}, entries: 8},
		{name: "files through symlinked directories", ents: []ent{dir("sub/"), symlink("l", "sub"), file("l/f", "x"),
			symlink("m", "l/."), file("m/g", "yz")}, entries: 5, bytes: 3},
		{name: "forward reference resolved by a later directory", ents: []ent{symlink("a", "d/../x"), dir("d/"), dir("x/")},
			entries: 3},
		{name: "long names (PAX)", ents: []ent{dir("./"), dir(longDir), file(longFile, "long"),
			symlink(longDir+"l", strings.Repeat("f", 300)+".txt")}, entries: 4, bytes: 4},
		{name: "hardlinks inside", ents: []ent{dir("./"), dir("./a/"), file("./a/x", "data"), hardlink("./h", "./a/x"),
			hardlink("a/h2", "h")}, entries: 5, bytes: 4},
		{name: "no root entry", ents: []ent{file("x", "1")}, entries: 1, bytes: 1},
	}
	for _, f := range formats {
		for _, tc := range tests {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				data := f.tgz(t, tc.ents...)
				sum, err := archive.Vet(context.Background(), bytes.NewReader(data), archive.Limits{},
					&archive.Expect{SHA256: sha(data), Entries: tc.entries, Bytes: tc.bytes})
				require.NoError(t, err)
				assert.Equal(t, tc.entries, sum.Entries)
				assert.Equal(t, tc.bytes, sum.Bytes)
				assert.Equal(t, sha(data), sum.SHA256)
				assert.Equal(t, int64(len(data)), sum.CompressedBytes)
			})
		}
	}
}

type failingReader struct {
	r     io.Reader
	after int
	err   error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, f.err
	}
	p = p[:min(len(p), f.after)]
	n, err := f.r.Read(p)
	f.after -= n
	return n, err
}

// TestVetReadErrorIsNotARejection checks that a body failing to read is
// told apart from a malformed stream wherever it fails, though it is read
// in a goroutine of its own, ahead of the checks.
func TestVetReadErrorIsNotARejection(t *testing.T) {
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) { testVetReadErrorIsNotARejection(t, f.tgz(t, mixedTree(4<<20)...)) })
	}
}

func testVetReadErrorIsNotARejection(t *testing.T, data []byte) {
	dropped := errors.New("connection reset by peer")
	vet := func(r io.Reader) error {
		_, err := archive.Vet(context.Background(), r, archive.Limits{}, nil)
		return err
	}
	repack := func(r io.Reader) error {
		_, err := archive.Repack(context.Background(), io.Discard, r, archive.Limits{}, nil)
		return err
	}
	tests := []struct {
		name  string
		pass  func(io.Reader) error
		after int
	}{
		{name: "vet, at the start", pass: vet, after: 0},
		{name: "vet, in the first read", pass: vet, after: 100},
		{name: "vet, in the middle", pass: vet, after: len(data) / 2},
		{name: "vet, one byte before the end", pass: vet, after: len(data) - 1},
		{name: "repack, in the middle", pass: repack, after: len(data) / 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.pass(&failingReader{r: bytes.NewReader(data), after: tc.after, err: dropped})
			require.Error(t, err)
			assert.ErrorIs(t, err, dropped)
			assert.Contains(t, err.Error(), "read archive")
			assert.NotErrorIs(t, err, archive.ErrRejected)
		})
	}
}

// gatedReader serves head, then blocks every further Read until release
// is closed. It counts the Reads under way and those begun after done is
// closed.
type gatedReader struct {
	head    io.Reader
	entered chan struct{} // closed when a Read first waits at the gate
	release chan struct{}
	done    chan struct{} // closed by the test when the pass returned
	once    sync.Once
	active  atomic.Int32
	late    atomic.Int32
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.active.Add(1)
	defer g.active.Add(-1)
	select {
	case <-g.done:
		g.late.Add(1)
	default:
	}
	if n, err := g.head.Read(p); n > 0 || err != io.EOF {
		return n, err
	}
	g.once.Do(func() { close(g.entered) })
	<-g.release
	return 0, errors.New("released")
}

// TestReadingEndsWithThePass checks that the goroutine reading the stream
// has ended when Vet or Repack returns: a read of the body under way is
// waited for, and none begins after. The stream is rejected at an entry
// after many good ones, and the body then blocks, so the reading goroutine
// is most often waiting in a Read when the checks give up. That Read then
// fails, after the rejection: the rejection is what is reported.
func TestReadingEndsWithThePass(t *testing.T) {
	ents := []ent{dir("./")}
	for i := range 20000 {
		ents = append(ents, file("./f"+strconv.Itoa(i), "x"))
	}
	ents = append(ents, file("../evil", "x"))
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) { testReadingEndsWithThePass(t, f.tgz(t, ents...)) })
	}
}

func testReadingEndsWithThePass(t *testing.T, data []byte) {
	passes := []struct {
		name string
		run  func(r io.Reader) error
	}{
		{name: "vet", run: func(r io.Reader) error {
			_, err := archive.Vet(context.Background(), r, archive.Limits{}, nil)
			return err
		}},
		{name: "repack", run: func(r io.Reader) error {
			_, err := archive.Repack(context.Background(), io.Discard, r, archive.Limits{}, nil)
			return err
		}},
	}
	for _, tc := range passes {
		t.Run(tc.name, func(t *testing.T) {
			// The whole head in one Read, as the gate's comes next.
			g := &gatedReader{head: &oneRead{b: data}, entered: make(chan struct{}), release: make(chan struct{}),
				done: make(chan struct{})}
			released := make(chan struct{})
			go func() {
				defer close(released)
				select {
				case <-g.entered:
				case <-g.done:
				}
				close(g.release)
			}()
			err := tc.run(g)
			assert.Zero(t, g.active.Load(), "no Read of the body is under way when the pass returns")
			close(g.done)
			<-released
			require.ErrorIs(t, err, archive.ErrRejected)
			assert.Contains(t, err.Error(), "../evil")
			assert.Zero(t, g.late.Load(), "no Read begins after the pass returned")
		})
	}
}

// oneRead returns b in a single Read, then io.EOF.
type oneRead struct{ b []byte }

func (o *oneRead) Read(p []byte) (int, error) {
	if len(o.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, o.b)
	o.b = o.b[n:]
	return n, nil
}

// TestVetCancelled checks a cancelled context ends a pass with the
// context's error, neither a rejection nor a failure to read, in each
// format.
func TestVetCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) {
			data := f.tgz(t, mixedTree(3<<20)...)
			_, err := archive.Vet(ctx, bytes.NewReader(data), archive.Limits{}, nil)
			assert.ErrorIs(t, err, context.Canceled)
			assert.NotErrorIs(t, err, archive.ErrRejected)
			_, err = archive.Repack(ctx, io.Discard, bytes.NewReader(data), archive.Limits{}, nil)
			assert.ErrorIs(t, err, context.Canceled)
			assert.NotErrorIs(t, err, archive.ErrRejected)
		})
	}
}
