package dblock_test

import (
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// TestSharedUpgradeInDoMultiTakesNothing: a DoMulti inside a transaction
// that holds one of its keys shared, asking for that key exclusively, is
// refused with ErrUpgrade, and takes none of its other keys: the refusal
// is known before any locking read, so the key that sorts before the
// shared one must stay free for others. (Today the DoMulti takes that key
// FOR UPDATE first, then refuses the shared one; the outer transaction
// keeps the first key, unknown to the library, until it ends.)
func TestSharedUpgradeInDoMultiTakesNothing(t *testing.T) {
	_, l := setupLocker(t)
	ctx := ctxT(t)
	// "a" sorts before "b" in DoMulti's canonical order.
	first, held := dblock.Resource("shared:upgrade-multi-a"), dblock.Resource("shared:upgrade-multi-b")
	err := l.Do(ctx, held, func(ctx context.Context, tx *gorm.DB) error {
		err := l.DoMulti(ctx, []dblock.Key{first, held}, fnMustNotRun(t))
		if !errors.Is(err, dblock.ErrUpgrade) {
			t.Errorf("DoMulti of a key held shared, exclusively = %v, want ErrUpgrade", err)
		}
		if err := freeForOther(l, first); err != nil {
			t.Errorf("the refused DoMulti took a key: %v", err)
		}
		if err := heldByOther(l, held); err != nil {
			t.Errorf("the shared key after the refusal: %v", err)
		}
		return nil
	}, dblock.Shared())
	if err != nil {
		t.Fatal(err)
	}
	assertFree(t, l, first)
	assertFree(t, l, held)
}
