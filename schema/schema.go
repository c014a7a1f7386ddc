package schema

import (
	"fmt"
	"regexp"
	"time"
)

// DefaultTable is the name of the lock table when none is configured.
const DefaultTable = "tb_lock"

// FenceSuffix is appended to the lock table's name to name its fence table.
const FenceSuffix = "_fence"

// RunSuffix, LeaderSuffix, SessionSuffix and PermitSuffix are appended to
// the lock table's name to name the tables of scheduled runs
// (dblock.MinInterval), of election leaders (dblock.Election), of
// connection labels (dblock.Label) and of semaphore permits
// (dblock.Permits).
const (
	RunSuffix     = "_run"
	LeaderSuffix  = "_leader"
	SessionSuffix = "_session"
	PermitSuffix  = "_permit"
)

// VersionTableSuffix is appended to the lock table's name to name the table
// in which package migrations records the applied schema versions.
const VersionTableSuffix = "_schema_version"

// Column limits of the lock table, in characters (the columns are utf8mb4
// VARCHARs). A key whose field is longer than its limit cannot be stored.
const (
	MaxResourceLen  = 255 // tb_lock.resource
	MaxOperationLen = 128 // tb_lock.operation
	MaxMethodLen    = 255 // tb_lock.method
	MaxUserLen      = 128 // tb_lock.user_id
)

// KeyHashLen is the length in bytes of tb_lock.key_hash, a SHA-256 digest.
const KeyHashLen = 32

// MaxTableNameLen is the longest table name [ValidTableName] accepts. MySQL
// and MariaDB identifiers hold at most 64 characters, and the longest name
// derived from the table's is its migrations' version table,
// name+[VersionTableSuffix] (15 more characters).
const MaxTableNameLen = 64 - len(VersionTableSuffix)

// tableNameRE is the one rule for lock table names: an unquoted-safe ASCII
// identifier, short enough for every derived identifier to fit in 64.
var tableNameRE = regexp.MustCompile(fmt.Sprintf(`^[A-Za-z_][A-Za-z0-9_]{0,%d}$`, MaxTableNameLen-1))

// ValidTableName reports whether name can be used as a lock table's name:
// ASCII letters, digits and underscores, not starting with a digit, at most
// [MaxTableNameLen] characters. It returns nil for a valid name and an error
// saying what is wrong otherwise.
func ValidTableName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("invalid table name: empty")
	case len(name) > MaxTableNameLen:
		return fmt.Errorf("invalid table name %q: %d characters, at most %d allowed", name, len(name), MaxTableNameLen)
	case !tableNameRE.MatchString(name):
		return fmt.Errorf("invalid table name %q: want ASCII letters, digits and underscores, not starting with a digit", name)
	}
	return nil
}

// FenceTable returns the name of the fence table that belongs to the lock
// table named table.
func FenceTable(table string) string {
	return table + FenceSuffix
}

// RunTable returns the name of the run table of the lock table named table.
func RunTable(table string) string { return table + RunSuffix }

// LeaderTable returns the name of the leader table of the lock table named
// table.
func LeaderTable(table string) string { return table + LeaderSuffix }

// SessionTable returns the name of the session table of the lock table
// named table.
func SessionTable(table string) string { return table + SessionSuffix }

// PermitTable returns the name of the permit table (the permits of
// counting semaphores) of the lock table named table.
func PermitTable(table string) string { return table + PermitSuffix }

// Lock is one row of the lock table: one lock key. Locks are held by
// locking this row (SELECT ... FOR UPDATE) in a transaction; the row itself
// is not updated while a lock is held, except for UpdatedAt on Galera in
// multi-writer mode (dblock.GaleraMultiWriter).
//
// The default table name is [DefaultTable]; for another name use
// db.Table(name).
type Lock struct {
	// ID is the row's surrogate key, the one that lock statements use.
	ID uint64 `gorm:"column:id;primaryKey;autoIncrement"`
	// KeyHash is the SHA-256 of the key's canonical encoding: the unique
	// identity of the key, whatever the length of its fields.
	KeyHash []byte `gorm:"column:key_hash;type:binary(32);not null;uniqueIndex:uk_tb_lock_key_hash"`
	// Resource is the key's resource, e.g. "order:42" (informational).
	Resource string `gorm:"column:resource;size:255;not null;default:''"`
	// Operation is the key's operation, e.g. "refund" (informational).
	Operation string `gorm:"column:operation;size:128;not null;default:''"`
	// Method is the key's method, e.g. "OrderService.Refund" (informational).
	Method string `gorm:"column:method;size:255;not null;default:''"`
	// UserID is the key's user, e.g. "u-7" (informational).
	UserID string `gorm:"column:user_id;size:128;not null;default:''"`
	// IsGlobal marks the single system-wide key.
	IsGlobal bool `gorm:"column:is_global;not null;default:false"`
	// CreatedAt is when the row was first inserted.
	CreatedAt time.Time `gorm:"column:created_at;precision:6;not null"`
	// UpdatedAt is when the row last changed.
	UpdatedAt time.Time `gorm:"column:updated_at;precision:6;not null"`
	// Hierarchy is the lock table's hierarchy setting, which every row
	// carries (migration 4): change it only with migrations.SetHierarchy.
	Hierarchy bool `gorm:"column:hierarchy;not null;default:false"`
}

// TableName returns [DefaultTable], the model's table for gorm.
func (Lock) TableName() string { return DefaultTable }

// Fence is one row of the fence table: the fencing counter of one lock key.
// The holder of a lock bumps Token in autocommit, so the counter survives
// the holder's rollback or crash and increases strictly per key.
//
// The default table name is [DefaultTable]+[FenceSuffix]; for another lock
// table use db.Table(FenceTable(name)).
type Fence struct {
	// KeyHash is the key's identity, the same as Lock.KeyHash: the counter
	// outlives the key's Lock row, which may be collected and created again.
	KeyHash []byte `gorm:"column:key_hash;type:binary(32);primaryKey"`
	// Token is the last fencing token handed out for the key.
	Token uint64 `gorm:"column:token;not null;default:0"`
	// UpdatedAt is when the token last changed.
	UpdatedAt time.Time `gorm:"column:updated_at;precision:6;not null"`
}

// TableName returns the default fence table's name, the model's table for
// gorm.
func (Fence) TableName() string { return DefaultTable + FenceSuffix }
