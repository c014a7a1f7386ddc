// Package lockkey encodes a lock key for the lock table: the canonical
// bytes of its granularity fields and their SHA-256, the value of the
// table's unique key_hash column. The library (dblock) and the txlock
// command share it, so that both find a key's row by the same hash.
//
// The encoding is fixed: rows already written keep their key_hash, so a
// change here would orphan every existing key row. A new encoding needs a
// new version tag.
package lockkey

import (
	"crypto/sha256"
	"encoding/binary"
)

// version prefixes the canonical encoding so that a future encoding can
// never collide with rows written by this one.
const version = "txlock.key.v1"

// Fields are a key's granularity fields, laid out as dblock.Key's, which
// converts to Fields: lockkey.Fields(k).
type Fields struct {
	Resource  string
	Operation string
	Method    string
	User      string
	Global    bool
}

// Canonical returns the canonical encoding of f: the version tag, then
// each string field length-prefixed (uvarint) in the order resource,
// operation, method, user, then one byte for Global. Distinct fields have
// distinct encodings. It does not validate f.
func (f Fields) Canonical() []byte {
	b := make([]byte, 0, len(version)+len(f.Resource)+len(f.Operation)+len(f.Method)+len(f.User)+4*binary.MaxVarintLen64+1)
	b = append(b, version...)
	for _, s := range [...]string{f.Resource, f.Operation, f.Method, f.User} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if f.Global {
		return append(b, 1)
	}
	return append(b, 0)
}

// Hash returns the SHA-256 of f's canonical encoding: the key_hash of its
// row in the lock table.
func (f Fields) Hash() [32]byte { return sha256.Sum256(f.Canonical()) }
