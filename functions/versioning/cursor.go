package function

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// A cursor marks where the next page of a template's versions starts: below
// version n. It is base64url (unpadded) of "n.check", where check is a hash
// of the template id and n. The check is not a secret — any position in a
// list the caller may read is fair to ask for — but it turns a cursor that
// was edited, truncated or carried over to another template into a 400
// instead of a silently wrong page.
const maxCursorLength = 64

func encodeCursor(template string, n int) string {
	s := strconv.Itoa(n)
	return base64.RawURLEncoding.EncodeToString([]byte(s + "." + cursorCheck(template, s)))
}

func decodeCursor(template, cursor string) (int, error) {
	bad := errs.E(errs.Invalid, "cursor %q: not a cursor issued for this template's versions", validate.Quote(cursor))
	if len(cursor) > maxCursorLength {
		return 0, bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return 0, bad
	}
	num, check, ok := strings.Cut(string(raw), ".")
	if !ok || check != cursorCheck(template, num) {
		return 0, bad
	}
	n, err := parseVersion("cursor", num)
	if err != nil {
		return 0, bad
	}
	return n, nil
}

func cursorCheck(template, num string) string {
	sum := sha256.Sum256([]byte("versioning-cursor\x00" + template + "\x00" + num))
	return hex.EncodeToString(sum[:8])
}
