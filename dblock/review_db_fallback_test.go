package dblock_test

import (
	"context"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/testdb"
)

// DB(ctx, fallback) picks the transaction by pool identity only, and
// otherwise returns the innermost one, while Do joins a transaction of the
// same server and schema whatever its pool (scopeFor / sameDatabase). A
// repository holding a second pool on database X (two gorm.Open of one
// DSN, a pool with other settings), inside ly.Do (database Y) inside
// lx.Do (database X), gets Y's transaction: its write meant for X goes to
// Y's table of the same name and commits with Y's lock, not with X's.
// Without the nested Y, the same call returns X's transaction (the one
// "on the fallback's database"), so the repository's target depends on
// whether some caller up the stack holds a lock on another database.
func TestReviewDBFallbackOtherPoolSameDatabase(t *testing.T) {
	e, lx := setupLocker(t)
	x2 := otherPool(t) // a second pool on database X
	ydb := secondDatabase(t)
	testdb.TableNamed(t, ydb, e.table)
	ly := faultLocker(t, ydb, e.table)
	biz := e.businessTable(t, "biz", "k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL")
	if err := ydb.Exec("CREATE TABLE `" + biz + "` (k VARCHAR(64) NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB").Error; err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	k := dblock.Resource("k")

	err := lx.Do(ctx, k, func(ctx context.Context, xtx *gorm.DB) error {
		if !sameTx(dblock.DB(ctx, x2), xtx) {
			t.Errorf("inside lx.Do only: DB(ctx, second pool on X) is not X's transaction")
		}
		return ly.Do(ctx, k, func(ctx context.Context, ytx *gorm.DB) error {
			got := dblock.DB(ctx, x2)
			if sameTx(got, ytx) {
				t.Errorf("inside ly.Do inside lx.Do: DB(ctx, second pool on X) returned Y's transaction")
			}
			return put(got, biz, "meant-for-x", 1)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	x, y := get(t, e.db, biz, "meant-for-x"), get(t, ydb, biz, "meant-for-x")
	t.Logf("the repository's write: in X %d, in Y %d (-1: absent)", x, y)
	if x != 1 || y != -1 {
		t.Errorf("a write through DB(ctx, a second pool on X) went to Y (X %d, Y %d), want X", x, y)
	}
}
