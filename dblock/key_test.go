package dblock_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/schema"
)

// TestKeysAreDistinctLocks: each combination of fields is a lock of its
// own; equal fields make the same lock however the key is built; the
// Global key is one lock.
func TestKeysAreDistinctLocks(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)

	holdKey(t, ctx, l, dblock.Resource("a"))
	for _, k := range []dblock.Key{
		{User: "u", Resource: "a"},
		dblock.Operation("a"),
		dblock.Method("a"),
		dblock.User("a"),
		{Resource: "a", Operation: "a"},
		dblock.Resource("A"), // keys compare byte for byte
		dblock.Resource("a "),
		dblock.Global(),
	} {
		assertFree(t, l, k)
	}
	assertHeld(t, l, dblock.Resource("a"))
	assertHeld(t, l, dblock.Key{Resource: "a"})

	holdKey(t, ctx, l, dblock.Key{User: "u", Resource: "a"})
	assertHeld(t, l, dblock.Key{Resource: "a", User: "u"})
	assertFree(t, l, dblock.User("u"))
	assertFree(t, l, dblock.Key{User: "u", Resource: "a", Operation: "refund"})

	holdKey(t, ctx, l, dblock.Global())
	assertHeld(t, l, dblock.Global())
	assertHeld(t, l, dblock.Key{Global: true})
	assertFree(t, l, dblock.Resource("global"))

	// One row per distinct key, whatever the number of acquisitions.
	var rows int
	if err := e.db.Raw("SELECT COUNT(*) FROM `" + e.table + "`").Row().Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 12 {
		t.Errorf("%d rows in %s, want 12 (one per distinct key)", rows, e.table)
	}
}

// longKey returns a string of n copies of r.
func longKey(r rune, n int) string { return strings.Repeat(string(r), n) }

// TestKeyValidate: keys that cannot name a lock are rejected with
// ErrInvalidKey and an error that names the field; keys at the column
// limits, in multi-byte characters too, are accepted.
func TestKeyValidate(t *testing.T) {
	for _, c := range []struct {
		name  string
		key   dblock.Key
		field string // in the message
	}{
		{"empty", dblock.Key{}, "empty key"},
		{"empty strings", dblock.Resource(""), "empty key"},
		{"Global+Resource", dblock.Key{Global: true, Resource: "a"}, "resource"},
		{"Global+Operation", dblock.Key{Global: true, Operation: "a"}, "operation"},
		{"Global+Method", dblock.Key{Global: true, Method: "a"}, "method"},
		{"Global+User", dblock.Key{Global: true, User: "a"}, "user"},
		{"Resource too long", dblock.Resource(longKey('a', schema.MaxResourceLen+1)), "Resource"},
		{"Operation too long", dblock.Operation(longKey('a', schema.MaxOperationLen+1)), "Operation"},
		{"Method too long", dblock.Method(longKey('a', schema.MaxMethodLen+1)), "Method"},
		{"User too long", dblock.User(longKey('a', schema.MaxUserLen+1)), "User"},
		{"Resource too long, multi-byte", dblock.Resource(longKey('é', schema.MaxResourceLen+1)), "Resource"},
		{"User too long, 4-byte", dblock.User(longKey('😀', schema.MaxUserLen+1)), "User"},
		{"Resource invalid UTF-8", dblock.Resource("order:\xff"), "Resource"},
		{"Operation invalid UTF-8", dblock.Operation("\xc3"), "Operation"},
		{"Method invalid UTF-8", dblock.Method("a\xed\xa0\x80"), "Method"}, // a surrogate
		{"User invalid UTF-8", dblock.User("u\x80"), "User"},
		{"Resource NUL", dblock.Resource("order\x0042"), "Resource"},
		{"Operation NUL", dblock.Operation("\x00"), "Operation"},
		{"Method NUL", dblock.Method("M\x00"), "Method"},
		{"User NUL", dblock.User("u\x00-7"), "User"},
		{"composite, one bad field", dblock.Key{User: "u-7", Resource: "r\x00"}, "Resource"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.key.Validate()
			if !errors.Is(err, dblock.ErrInvalidKey) {
				t.Fatalf("Validate(%s) = %v, want ErrInvalidKey", c.key, err)
			}
			mustContain(t, err, c.field)
		})
	}
	for _, c := range []struct {
		name string
		key  dblock.Key
	}{
		{"Resource at limit", dblock.Resource(longKey('a', schema.MaxResourceLen))},
		{"Operation at limit", dblock.Operation(longKey('a', schema.MaxOperationLen))},
		{"Method at limit", dblock.Method(longKey('a', schema.MaxMethodLen))},
		{"User at limit", dblock.User(longKey('a', schema.MaxUserLen))},
		{"Resource at limit, 2-byte", dblock.Resource(longKey('é', schema.MaxResourceLen))},
		{"Operation at limit, 3-byte", dblock.Operation(longKey('€', schema.MaxOperationLen))},
		{"Method at limit, 4-byte", dblock.Method(longKey('😀', schema.MaxMethodLen))},
		{"User at limit, 4-byte", dblock.User(longKey('😀', schema.MaxUserLen))},
		{"all fields", dblock.Key{User: "u-7", Method: "S.M", Operation: "refund", Resource: "order:42"}},
		{"Global", dblock.Global()},
		{"spaces", dblock.Resource(" ")},
	} {
		if err := c.key.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", c.name, err)
		}
	}
}

// TestKeyColumnsRoundTrip: keys at the column limits, in multi-byte
// characters, are stored whole in their columns (utf8mb4) and lock.
func TestKeyColumnsRoundTrip(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)

	for _, key := range []dblock.Key{
		dblock.Resource(longKey('é', schema.MaxResourceLen)),
		dblock.Operation(longKey('€', schema.MaxOperationLen)),
		dblock.Method(longKey('😀', schema.MaxMethodLen)),
		dblock.User(longKey('😀', schema.MaxUserLen)),
		dblock.Key{User: "ü-7", Method: "Svc.Ünd", Operation: "取消", Resource: "order:😀"},
		dblock.Global(),
	} {
		if err := l.Do(ctx, key, nop); err != nil {
			t.Fatalf("Do(%.40s…): %v", key, err)
		}
		h := lockkey.Fields(key).Hash()
		var got dblock.Key
		var global int
		err := e.db.Raw("SELECT resource, operation, method, user_id, is_global FROM `"+e.table+"` WHERE key_hash = ?", h[:]).
			Row().Scan(&got.Resource, &got.Operation, &got.Method, &got.User, &global)
		if err != nil {
			t.Fatalf("reading the row of %.40s…: %v", key, err)
		}
		got.Global = global == 1
		if got != key {
			t.Errorf("row of %.40s… holds %.40s…", key, got)
		}
	}
}

// TestInvalidKeyRejected: acquisitions of an invalid key fail with
// ErrInvalidKey before touching the server: no row is created.
func TestInvalidKeyRejected(t *testing.T) {
	e, l := setupLocker(t)
	ctx := ctxT(t)
	bad := dblock.Key{Global: true, User: "u-7"}

	tx := e.db.WithContext(ctx).Begin()
	defer tx.Rollback()
	for name, err := range acquireAll(ctx, l, tx, bad, fnMustNotRun(t)) {
		if !errors.Is(err, dblock.ErrInvalidKey) {
			t.Errorf("%s = %v, want ErrInvalidKey", name, err)
		}
	}
	assertNoRows(t, e)
}

// assertNoRows checks that the lock table is empty: nothing reached it.
func assertNoRows(t *testing.T, e env) {
	t.Helper()
	var rows int
	if err := e.db.Raw("SELECT COUNT(*) FROM `" + e.table + "`").Row().Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("%d rows in %s, want none", rows, e.table)
	}
}

// TestKeyStringAndValidate pins the rendering meant for logs and errors,
// and which keys are empty or valid.
func TestKeyStringAndValidate(t *testing.T) {
	for _, c := range []struct {
		key         dblock.Key
		str         string
		zero, valid bool
	}{
		{dblock.Key{}, "(empty key)", true, false},
		{dblock.Global(), "global", false, true},
		{dblock.Resource("order:42"), `resource="order:42"`, false, true},
		{dblock.Key{User: "u-7", Resource: "order:42"}, `user="u-7" resource="order:42"`, false, true},
		{dblock.Key{Resource: "r", Operation: "o", Method: "m", User: "u"},
			`user="u" method="m" operation="o" resource="r"`, false, true},
		{dblock.Operation(`a"b`), `operation="a\"b"`, false, true},
	} {
		if got := c.key.String(); got != c.str {
			t.Errorf("String() = %s, want %s", got, c.str)
		}
		if got := c.key.IsZero(); got != c.zero {
			t.Errorf("%s: IsZero() = %v", c.str, got)
		}
		if got := c.key.Validate() == nil; got != c.valid {
			t.Errorf("%s: Validate() = %v", c.str, c.key.Validate())
		}
	}
}

// decodeCanonical parses the canonical encoding back into a key, proving
// that the encoding is injective: two keys with the same encoding decode to
// the same key.
func decodeCanonical(b []byte) (dblock.Key, error) {
	const version = "txlock.key.v1"
	rest, ok := bytes.CutPrefix(b, []byte(version))
	if !ok {
		return dblock.Key{}, errors.New("no version tag")
	}
	var fields [4]string
	for i := range fields {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n > uint64(len(rest)-w) {
			return dblock.Key{}, errors.New("bad length prefix")
		}
		fields[i] = string(rest[w : w+int(n)])
		rest = rest[w+int(n):]
	}
	if len(rest) != 1 || rest[0] > 1 {
		return dblock.Key{}, errors.New("bad Global byte or trailing bytes")
	}
	return dblock.Key{Resource: fields[0], Operation: fields[1], Method: fields[2], User: fields[3], Global: rest[0] == 1}, nil
}

// FuzzKey: Canonical is deterministic and injective (it decodes back to
// the key, and keys that differ only by where bytes fall between fields
// differ), Hash follows it, and Validate accepts exactly the keys that can
// be stored.
func FuzzKey(f *testing.F) {
	f.Add("order:42", "", "", "", false)
	f.Add("", "", "", "", true)
	f.Add("ab", "c", "", "", false)
	f.Add("a", "bc", "", "", false)
	f.Add("", "", "", "", false)
	f.Add("a\x00b", "\x01", "m", "u-7", false)
	f.Add("\xff", "op", "", "", false)
	f.Add(longKey('😀', schema.MaxResourceLen), "", "", "", false)
	f.Add("x", "", "", "", true)
	f.Fuzz(func(t *testing.T, r, o, m, u string, g bool) {
		k := dblock.Key{Resource: r, Operation: o, Method: m, User: u, Global: g}
		c := lockkey.Fields(k).Canonical()
		if !bytes.Equal(c, lockkey.Fields(k).Canonical()) {
			t.Fatal("Canonical is not deterministic")
		}
		if lockkey.Fields(k).Hash() != lockkey.Fields(k).Hash() {
			t.Fatal("Hash is not deterministic")
		}
		back, err := decodeCanonical(c)
		if err != nil {
			t.Fatalf("Canonical(%q) = %q does not decode: %v", k, c, err)
		}
		if back != k {
			t.Fatalf("Canonical(%q) decodes to %q", k, back)
		}
		// Moving bytes across a field boundary changes the encoding.
		if r != "" {
			shifted := k
			shifted.Resource, shifted.Operation = r[:len(r)-1], r[len(r)-1:]+o
			if bytes.Equal(lockkey.Fields(shifted).Canonical(), c) || lockkey.Fields(shifted).Hash() == lockkey.Fields(k).Hash() {
				t.Fatalf("%q and %q share a canonical encoding", k, shifted)
			}
		}
		flipped := k
		flipped.Global = !g
		if bytes.Equal(lockkey.Fields(flipped).Canonical(), c) {
			t.Fatalf("%q and %q share a canonical encoding", k, flipped)
		}

		err = k.Validate()
		want := validKey(k)
		if (err == nil) != want {
			t.Fatalf("Validate(%q) = %v, want valid=%v", k, err, want)
		}
		if err != nil && !errors.Is(err, dblock.ErrInvalidKey) {
			t.Fatalf("Validate(%q) = %v, not ErrInvalidKey", k, err)
		}
	})
}

// validKey is the specification of Validate.
func validKey(k dblock.Key) bool {
	fields := []struct {
		v   string
		max int
	}{{k.Resource, schema.MaxResourceLen}, {k.Operation, schema.MaxOperationLen}, {k.Method, schema.MaxMethodLen}, {k.User, schema.MaxUserLen}}
	set := 0
	for _, f := range fields {
		if f.v == "" {
			continue
		}
		set++
		if !utf8.ValidString(f.v) || strings.ContainsRune(f.v, 0) || utf8.RuneCountInString(f.v) > f.max {
			return false
		}
	}
	if k.Global {
		return set == 0
	}
	return set > 0
}
