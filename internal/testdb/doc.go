// Package testdb gives tests a MySQL/MariaDB server and a lock table of
// their own.
//
// The server is the one named by $DBLOCK_DSN, or else the one at
// root@tcp(127.0.0.1:3306)/test. When neither variable nor server exists
// and mariadbd is installed, the first call to [DSN] starts a throwaway
// server for the test process, which [Main] stops at the end:
//
//	func TestMain(m *testing.M) { testdb.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		db := testdb.Open(t)
//		table := testdb.Table(t, db) // fresh tb_lock_t…, dropped after the test
//		testdb.NoLeaks(t, db)
//		...
//	}
//
// Every test gets its own table, so tests of all packages can run in
// parallel against one server.
package testdb
