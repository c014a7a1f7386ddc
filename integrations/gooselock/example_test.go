package gooselock_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"testing/fstest"

	_ "github.com/go-sql-driver/mysql"
	"github.com/pressly/goose/v3"

	"github.com/txlock/txlock/integrations/gooselock"
)

// Several instances of a service start at once and each runs its goose
// migrations: with gooselock, one applies them while the others wait, then
// find nothing to do. The example runs against $DBLOCK_DSN (the package's
// tests set it), else a local server with root and a database "test".
func Example() {
	dsn := os.Getenv("DBLOCK_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/test"
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	migrations := fstest.MapFS{
		"00001_create_gooselock_example.sql": {Data: []byte(`-- +goose Up
CREATE TABLE gooselock_example (id INT PRIMARY KEY);
-- +goose Down
DROP TABLE gooselock_example;
`)},
	}
	locker, err := gooselock.New() // tb_lock, created if missing
	if err != nil {
		log.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectMySQL, db, migrations,
		goose.WithLocker(locker), goose.WithTableName("gooselock_example_version"))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	results, err := p.Up(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("applied:", len(results))

	// Clean up, under the lock as well.
	if _, err := p.DownTo(ctx, 0); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec("DROP TABLE gooselock_example_version"); err != nil {
		log.Fatal(err)
	}
	// Output: applied: 1
}
