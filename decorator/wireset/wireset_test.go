package wireset_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator/wireset"
	"github.com/txlock/txlock/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }

func TestProvideLocker(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	l, cleanup, err := wireset.ProvideLockerWithOptions(db, wireset.LockerOptions{dblock.Table(table)})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	if err := l.Do(context.Background(), dblock.Global(), func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	// The option reached the Locker: the global key's row is in its table.
	var n int
	if err := db.Raw("SELECT COUNT(*) FROM `" + table + "` WHERE is_global = 1").Row().Scan(&n); err != nil || n != 1 {
		t.Errorf("rows of the global key in %s: %d (%v), want 1", table, n, err)
	}
	if _, _, err := wireset.ProvideLockerWithOptions(db, wireset.LockerOptions{dblock.Table("bad name")}); err == nil {
		t.Error("an invalid option was accepted")
	}
	cleanup()
	if err := l.Do(context.Background(), dblock.Global(), func(context.Context, *gorm.DB) error { return nil }); err == nil {
		t.Error("the cleanup did not close the Locker")
	}
}

// The core packages build without wire.
func TestCoreDoesNotImportWire(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/txlock/txlock/dblock", "github.com/txlock/txlock/decorator").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/google/wire") {
			t.Errorf("dblock or decorator depends on %s", dep)
		}
	}
}
