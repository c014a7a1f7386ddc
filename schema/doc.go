// Package schema describes the tables that txlock keeps its locks in: the
// gorm models [Lock] and [Fence], the column limits that keys must respect,
// and the rule for table names.
//
// The tables themselves are created by the versioned SQL of package
// github.com/txlock/txlock/migrations, not by gorm's AutoMigrate: the
// models mirror that SQL (a test compares them against a migrated table) so
// that gorm queries and the schema cannot drift apart.
//
// Table names. The lock table is called [DefaultTable] unless the caller
// chooses another name; every other identifier derives from it: the fence
// table is name+[FenceSuffix], the unique key is "uk_"+name+"_key_hash" and
// the migrations' version table is name+"_schema_version". [ValidTableName]
// is the one rule that all packages apply to such a name.
package schema
