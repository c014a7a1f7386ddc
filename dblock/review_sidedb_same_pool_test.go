package dblock_test

import (
	"testing"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
)

// New requires SideDB for a gorm handle opened on an existing *sql.DB. A
// caller who passes the very pool the handle was opened on (SideDB(sqlDB):
// "it wants a *sql.DB, here is mine") was back at issue 14 item 8: two
// holders on a pool of 2, each creating a new key's row inside its lock,
// waited for each other's connection forever. New refuses a SideDB that is
// the handle's own pool, naming the problem, as it refuses a missing one.
// (TestGormOnExistingDBNeedsSideDB shows the two holders finishing with a
// SideDB of their own.)
func TestReviewSideDBSamePoolHangs(t *testing.T) {
	e := setup(t)
	db, err := gorm.Open(mysql.New(mysql.Config{Conn: e.sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.New(db, dblock.Table(e.table), dblock.SideDB(e.sqlDB))
	if err == nil {
		_ = l.Close()
		t.Fatal("New accepted SideDB(the handle's own pool): the row step would wait on the pool its holders hold")
	}
	t.Logf("New: %v", err)
	mustContain(t, err, "SideDB")
}
