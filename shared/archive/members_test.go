package archive_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/archive"
)

// lenOffset is where a member's header holds its length: after the fixed
// header (10 bytes), XLEN (2) and the subfield's ID and LEN (4).
const lenOffset = 16

// splitMembers cuts a stream into members by the lengths their headers
// give, checking each header gives one.
func splitMembers(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(data) > 0 {
		require.GreaterOrEqual(t, len(data), lenOffset+4, "a whole header")
		require.Equal(t, []byte{0x1f, 0x8b, 8, 1 << 2}, data[:4], "gzip, deflate, extra fields")
		require.Equal(t, []byte{'S', 'L', 4, 0}, data[12:lenOffset], "the length subfield")
		n := int(binary.LittleEndian.Uint32(data[lenOffset:]))
		require.LessOrEqual(t, n, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// homeBytes is n bytes of text and random runs, as a home's tar holds.
func homeBytes(n int) []byte {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 0, n)
	for len(b) < n {
		run := min(n-len(b), 1+rng.IntN(300<<10))
		if rng.IntN(2) == 0 {
			for range run {
				b = append(b, "abcdefgh \n"[rng.IntN(10)])
			}
		} else {
			for range run {
				b = append(b, byte(rng.Uint32()))
			}
		}
	}
	return b
}

// TestWriterMembers checks the members Writer writes: each gives its exact
// length and inflates on its own, every one but the last to MemberSize
// bytes and the last to fewer, and the whole is one gzip stream to other
// readers, GNU gzip's included.
func TestWriterMembers(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		write   int // the size of each Write
		members int
	}{
		{name: "nothing written: one empty member", size: 0, write: 1, members: 1},
		{name: "one byte", size: 1, write: 1, members: 1},
		{name: "one byte short of a member", size: archive.MemberSize - 1, write: 4096, members: 1},
		{name: "exactly a member: an empty one ends it", size: archive.MemberSize, write: archive.MemberSize, members: 2},
		{name: "one byte over", size: archive.MemberSize + 1, write: 64 << 10, members: 2},
		{name: "writes across members", size: 3*archive.MemberSize + 17, write: 1<<20 + 333, members: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := homeBytes(tc.size)
			var buf bytes.Buffer
			zw, err := archive.NewWriter(&buf, 6)
			require.NoError(t, err)
			for rest := want; len(rest) > 0; {
				k := min(len(rest), tc.write)
				n, err := zw.Write(rest[:k])
				require.NoError(t, err)
				require.Equal(t, k, n)
				rest = rest[k:]
			}
			require.NoError(t, zw.Close())
			data := buf.Bytes()

			parts := splitMembers(t, data)
			assert.Len(t, parts, tc.members)
			var joined []byte
			for i, p := range parts {
				zr, err := gzip.NewReader(bytes.NewReader(p))
				require.NoError(t, err)
				zr.Multistream(false)
				got, err := io.ReadAll(zr)
				require.NoError(t, err, "member %d inflates on its own", i)
				if i < len(parts)-1 {
					assert.Len(t, got, archive.MemberSize, "member %d", i)
				} else {
					assert.Less(t, len(got), archive.MemberSize, "the last member")
				}
				joined = append(joined, got...)
			}
			assert.True(t, bytes.Equal(want, joined), "the members hold the stream, in order")

			gunzipped := run(t, bytes.NewReader(data), "gzip", "-dc")
			assert.True(t, bytes.Equal(want, gunzipped), "GNU gzip reads the whole stream")
		})
	}
}

func mustReadAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

// failingWriter takes ok bytes, then fails.
type failingWriter struct{ ok int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.ok {
		n := f.ok
		f.ok = 0
		return n, io.ErrShortWrite
	}
	f.ok -= len(p)
	return len(p), nil
}

// TestWriterFailureSticks checks that once writing a member failed, every
// later Write and Close fails with it, so no member is written twice or
// after a broken one.
func TestWriterFailureSticks(t *testing.T) {
	tests := []struct {
		name  string
		ok    int // bytes the destination takes before failing
		write int
	}{
		{name: "the first member fails", ok: 0, write: archive.MemberSize},
		{name: "a later member fails part way", ok: 1 << 20, write: 3 * archive.MemberSize},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := &failingWriter{ok: tc.ok}
			zw, err := archive.NewWriter(dst, 6)
			require.NoError(t, err)
			_, err = zw.Write(homeBytes(tc.write))
			require.ErrorIs(t, err, io.ErrShortWrite)
			dst.ok = 1 << 30
			_, err = zw.Write([]byte("more"))
			assert.ErrorIs(t, err, io.ErrShortWrite, "a Write after the failure")
			assert.ErrorIs(t, zw.Close(), io.ErrShortWrite, "Close after the failure")
			assert.Equal(t, 1<<30, dst.ok, "nothing more reached the destination")
		})
	}
}

// TestVetRejectsBadMembers alters a stream of members where their lengths
// and trailers are read. Every alteration is rejected, by Vet and by
// Repack, as the stream's fault and not as a failure to read it.
func TestVetRejectsBadMembers(t *testing.T) {
	plain := tarOf(t, mixedTree(3<<20)...)
	good := members.compress(t, plain)
	parts := splitMembers(t, good)
	require.GreaterOrEqual(t, len(parts), 3)
	_, err := archive.Vet(context.Background(), bytes.NewReader(good), archive.Limits{}, nil)
	require.NoError(t, err, "the stream before it is altered")
	first := len(parts[0])
	setLen := func(n int) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[lenOffset:], uint32(n)) }
	}
	setSize := func(n int) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[first-4:], uint32(n)) }
	}
	lastSize := func(b []byte) { // the last member's size, one over what it inflates to
		binary.LittleEndian.PutUint32(b[len(b)-4:], binary.LittleEndian.Uint32(b[len(b)-4:])+1)
	}
	// A file whose content ends at the first member's end, so that the
	// next member starts with a tar header: cut there, the tar stream
	// reads as whole (archive/tar takes an end between entries as the
	// end), and only the members tell it was cut.
	aligned := members.tgz(t, file("a", string(homeBytes(archive.MemberSize-512))), file("b", "after the cut"))
	zr, err := gzip.NewReader(bytes.NewReader(splitMembers(t, aligned)[0]))
	require.NoError(t, err)
	hs, err := readNames(t, mustReadAll(t, zr))
	require.NoError(t, err, "the first member alone reads as a whole tar stream")
	require.Len(t, hs, 1)
	// A short member before others: the stream went on after its end.
	shortFirst := append(members.compress(t, plain[:1000]), members.compress(t, plain[1000:])...)
	// A member of 256 MiB of zeros, which deflate squeezes into about
	// 256 KiB: within a member's length, far over what it may inflate to.
	zeros := func(size uint32) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Extra = []byte{'S', 'L', 4, 0, 0, 0, 0, 0}
		require.NoError(t, writeZeros(zw, 256<<20))
		require.NoError(t, zw.Close())
		b := buf.Bytes()
		binary.LittleEndian.PutUint32(b[lenOffset:], uint32(len(b)))
		if size > 0 {
			binary.LittleEndian.PutUint32(b[len(b)-4:], size)
		}
		return b
	}
	// The first member with a copy of its trailer after it, inside its
	// length: the trailer read at the length's end is a good one.
	padded := append(append(bytes.Clone(parts[0]), parts[0][first-8:]...), good[first:]...)
	setLen(first + 8)(padded)
	var mixed bytes.Buffer
	zw, err := archive.NewWriter(&mixed, 6)
	require.NoError(t, err)
	_, err = zw.Write(plain[:archive.MemberSize])
	require.NoError(t, err)
	mixed.Write(oneMember.compress(t, plain[archive.MemberSize:]))

	tests := []struct {
		name   string
		data   []byte
		change func([]byte)
		reason string // a part of the rejection's reason, any rejection when empty
	}{
		{name: "length shorter than a header and trailer", change: setLen(10), reason: "length 10 out of bounds"},
		{name: "length over the bound", change: setLen(3 << 20), reason: "length 3145728 out of bounds"},
		// Its trailer is then read from other bytes: whichever check meets
		// them first answers.
		{name: "length short of the member's end", change: setLen(first - 100), reason: "gzip member"},
		{name: "length past the member's end", data: padded, reason: "ends 8 bytes before its length"},
		{name: "trailer's size under what it inflates to", change: setSize(archive.MemberSize - 1),
			reason: "inflates to more than its trailer's 1048575 bytes"},
		{name: "the last trailer's size over what it inflates to", change: lastSize, reason: "checksum mismatch"},
		{name: "trailer's size over a member's", change: setSize(archive.MemberSize + 1),
			reason: "says it inflates to 1048577 bytes, more than 1048576"},
		{name: "corrupt CRC-32", change: func(b []byte) { b[first-8] ^= 0xff }, reason: "checksum mismatch"},
		{name: "corrupt deflate data", change: func(b []byte) {
			for i := first / 2; i < first/2+64; i++ {
				b[i] ^= 0x55
			}
		}},
		{name: "truncated inside a member's header", data: good[:first+5], reason: "truncated"},
		{name: "truncated between members", data: good[:first], reason: "truncated"},
		{name: "truncated between members, at a tar header", data: splitMembers(t, aligned)[0], reason: "truncated"},
		{name: "a short member before the end", data: shortFirst, reason: "data after the last gzip member"},
		{name: "a later member's corrupt deflate data", change: func(b []byte) {
			for i := first + len(parts[1])/2; i < first+len(parts[1])/2+64; i++ {
				b[i] ^= 0x55
			}
		}},
		{name: "a member without its length after members with theirs", data: mixed.Bytes(),
			reason: "not a gzip member giving its length"},
		{name: "a member inflating to 256 MiB", data: zeros(0), reason: "says it inflates to 268435456 bytes, more than 1048576"},
		{name: "a member inflating to 256 MiB, its trailer saying 1 MiB", data: zeros(archive.MemberSize),
			reason: "inflates to more than its trailer's 1048576 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data
			if tc.change != nil {
				data = bytes.Clone(good)
				tc.change(data)
			}
			for name, pass := range map[string]func() error{
				"vet": func() error {
					_, err := archive.Vet(context.Background(), bytes.NewReader(data), archive.Limits{}, nil)
					return err
				},
				"repack": func() error {
					_, err := archive.Repack(context.Background(), io.Discard, bytes.NewReader(data), archive.Limits{}, nil)
					return err
				},
			} {
				err := pass()
				require.Error(t, err, name)
				assert.ErrorIs(t, err, archive.ErrRejected, name)
				if tc.reason != "" {
					assert.Contains(t, err.Error(), tc.reason, name)
				}
				assert.NotContains(t, err.Error(), "read archive", name)
			}
		})
	}
}

// TestMembersInflateInOrder re-packs the same tar stream from each format:
// however the members were inflated at once, what the checks saw and what
// was written is the same, byte for byte.
func TestMembersInflateInOrder(t *testing.T) {
	plain := tarOf(t, mixedTree(12<<20)...)
	type result struct {
		out              []byte
		entries, content int64
	}
	results := map[string]result{}
	for _, f := range formats {
		data := f.compress(t, plain)
		var out bytes.Buffer
		sum, err := archive.Repack(context.Background(), &out, bytes.NewReader(data), archive.Limits{}, nil)
		require.NoError(t, err, f.name)
		assert.Equal(t, sha(data), sum.SHA256, f.name)
		assert.Equal(t, int64(len(data)), sum.CompressedBytes, f.name)
		results[f.name] = result{out: out.Bytes(), entries: sum.Entries, content: sum.Bytes}
	}
	assert.Greater(t, len(splitMembers(t, members.compress(t, plain))), 8, "enough members to be inflated at once")
	assert.Equal(t, results[oneMember.name], results[members.name])
}
