package dblock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"gorm.io/gorm"
)

// DoMulti holds all of keys for the duration of fn, in one transaction, as
// Do does for one key. Keys are taken in one canonical order (by their
// canonical encoding) whatever order the caller lists them in, so that
// two DoMulti calls over overlapping keys cannot deadlock each other.
// Duplicate keys are taken once.
func (l *Locker) DoMulti(ctx context.Context, keys []Key, fn func(ctx context.Context, tx *gorm.DB) error, opts ...LockOption) error {
	if fn == nil {
		return errors.New("dblock: DoMulti: nil fn")
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: DoMulti: no keys", ErrInvalidKey)
	}
	for _, k := range keys {
		if err := l.check(ctx, k); err != nil {
			return err
		}
	}
	return l.do(ctx, canonicalOrder(keys), fn, opts)
}

// canonicalOrder returns keys sorted by canonical encoding, without
// duplicates.
func canonicalOrder(keys []Key) []Key {
	type enc struct {
		k Key
		b []byte
	}
	es := make([]enc, len(keys))
	for i, k := range keys {
		es[i] = enc{k, k.canonical()}
	}
	slices.SortFunc(es, func(a, b enc) int { return bytes.Compare(a.b, b.b) })
	out := make([]Key, 0, len(es))
	for i, e := range es {
		if i > 0 && bytes.Equal(e.b, es[i-1].b) {
			continue
		}
		out = append(out, e.k)
	}
	return out
}
