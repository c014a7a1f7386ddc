package dblock

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/txlock/txlock/internal/lockkey"
	"github.com/txlock/txlock/schema"
)

// A Key names one lock: one row of tb_lock. Its fields are the granularity
// columns; set one, or combine several ("user u-7 refunding order 42"). Two
// keys are the same lock exactly when all their fields are equal.
//
// Key is comparable and may be used as a map key.
type Key struct {
	Resource  string // a business object, e.g. "order:42"
	Operation string // a kind of action, e.g. "refund"
	Method    string // a service method, e.g. "OrderService.Refund"
	User      string // a user or tenant id, e.g. "u-7"
	Global    bool   // the one system-wide key; no other field may be set with it
}

// Resource returns the key of a business object, such as "order:42".
func Resource(name string) Key { return Key{Resource: name} }

// Operation returns the key of a kind of operation, such as "refund".
func Operation(name string) Key { return Key{Operation: name} }

// Method returns the key of a service method, such as "OrderService.Refund".
func Method(name string) Key { return Key{Method: name} }

// User returns the key of one user (or tenant), such as "u-7".
func User(id string) Key { return Key{User: id} }

// Global returns the one system-wide key.
func Global() Key { return Key{Global: true} }

// IsZero reports whether no field of k is set.
func (k Key) IsZero() bool { return k == Key{} }

// granularity names the fields k sets, joined by "+" in the fixed order
// global, user, method, operation, resource ("user+resource"). It is meant
// for metrics and logs, where the raw key would have unbounded cardinality.
func (k Key) granularity() string { return granName(granIndex(k)) }

// String renders k for logs and errors, e.g. `user="u-7" resource="order:42"`.
func (k Key) String() string {
	if k.Global {
		return "global"
	}
	var b strings.Builder
	add := func(name, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%q", name, v)
	}
	add("user", k.User)
	add("method", k.Method)
	add("operation", k.Operation)
	add("resource", k.Resource)
	if b.Len() == 0 {
		return "(empty key)"
	}
	return b.String()
}

// Validate reports whether k can name a lock. The error wraps
// [ErrInvalidKey] and says which field is wrong.
func (k Key) Validate() error {
	if k.Global {
		if k.Resource != "" || k.Operation != "" || k.Method != "" || k.User != "" {
			return fmt.Errorf("%w: Global cannot be combined with another field (got %s)", ErrInvalidKey, Key{Resource: k.Resource, Operation: k.Operation, Method: k.Method, User: k.User})
		}
		return nil
	}
	if k.IsZero() {
		return fmt.Errorf("%w: empty key: set Resource, Operation, Method, User or Global", ErrInvalidKey)
	}
	for _, f := range [...]struct {
		name string
		v    string
		max  int
	}{
		{"Resource", k.Resource, schema.MaxResourceLen},
		{"Operation", k.Operation, schema.MaxOperationLen},
		{"Method", k.Method, schema.MaxMethodLen},
		{"User", k.User, schema.MaxUserLen},
	} {
		if f.v == "" {
			continue
		}
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidKey, f.name)
		}
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidKey, f.name)
		}
		if n := utf8.RuneCountInString(f.v); n > f.max {
			return fmt.Errorf("%w: %s is %d characters, the column holds at most %d", ErrInvalidKey, f.name, n, f.max)
		}
	}
	return nil
}

// canonical returns the canonical byte encoding of k (internal/lockkey's,
// shared with the txlock command): distinct keys have distinct encodings.
func (k Key) canonical() []byte { return lockkey.Fields(k).Canonical() }

// hash returns the SHA-256 of k's canonical encoding: the value of the
// table's unique key_hash column.
func (k Key) hash() [32]byte { return lockkey.Fields(k).Hash() }
