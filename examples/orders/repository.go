package orders

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
)

// Tables names the example's business tables, so that several runs (tests
// in parallel) can share one database.
type Tables struct {
	Orders  string
	Refunds string
}

// DefaultTables are the tables of the demo.
var DefaultTables = TablesWithPrefix("demo_")

// TablesWithPrefix returns tables named prefix+"orders" and
// prefix+"refunds".
func TablesWithPrefix(prefix string) Tables {
	return Tables{Orders: prefix + "orders", Refunds: prefix + "refunds"}
}

var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

func (t Tables) validate() error {
	for _, n := range []string{t.Orders, t.Refunds} {
		if !tableNameRE.MatchString(n) {
			return fmt.Errorf("orders: invalid table name %q", n)
		}
	}
	return nil
}

// CreateTables creates the business tables if they do not exist. The lock
// table is created by txlock's migrations.
func CreateTables(ctx context.Context, db *gorm.DB, t Tables) error {
	if err := t.validate(); err != nil {
		return err
	}
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS `" + t.Orders + "` (" +
			" id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY," +
			" user_id VARCHAR(64) NOT NULL," +
			" amount BIGINT NOT NULL," +
			" status VARCHAR(16) NOT NULL," +
			" updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)" +
			") ENGINE=InnoDB",
		"CREATE TABLE IF NOT EXISTS `" + t.Refunds + "` (" +
			" id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY," +
			" order_id BIGINT NOT NULL," +
			" amount BIGINT NOT NULL," +
			" gateway_id VARCHAR(64) NOT NULL," +
			" created_at DATETIME(6) NOT NULL," +
			" KEY (order_id)" +
			") ENGINE=InnoDB",
	} {
		if err := db.WithContext(ctx).Exec(stmt).Error; err != nil {
			return fmt.Errorf("orders: creating tables: %w", err)
		}
	}
	return nil
}

// DropTables drops the business tables.
func DropTables(ctx context.Context, db *gorm.DB, t Tables) error {
	if err := t.validate(); err != nil {
		return err
	}
	return db.WithContext(ctx).Exec("DROP TABLE IF EXISTS `" + t.Orders + "`, `" + t.Refunds + "`").Error
}

// Repository stores orders and refunds. Every statement goes through
// dblock.DB(ctx, db): inside a locked call it runs in the lock's
// transaction, otherwise on db.
type Repository struct {
	db     *gorm.DB
	tables Tables
}

// NewRepository returns a Repository on db and the tables t.
func NewRepository(db *gorm.DB, t Tables) (*Repository, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	return &Repository{db: db, tables: t}, nil
}

type orderRow struct {
	ID     int64
	UserID string
	Amount int64
	Status string
}

// Get returns the order id.
func (r *Repository) Get(ctx context.Context, id int64) (Order, error) {
	var row orderRow
	err := dblock.DB(ctx, r.db).Table(r.tables.Orders).Select("id", "user_id", "amount", "status").Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Order{}, fmt.Errorf("order %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Order{}, err
	}
	return Order(row), nil
}

// Insert records a new order.
func (r *Repository) Insert(ctx context.Context, userID string, amount int64) (Order, error) {
	row := orderRow{UserID: userID, Amount: amount, Status: StatusNew}
	if err := dblock.DB(ctx, r.db).Table(r.tables.Orders).Select("user_id", "amount", "status").Create(&row).Error; err != nil {
		return Order{}, err
	}
	return Order(row), nil
}

// SetStatus changes the status of order id.
func (r *Repository) SetStatus(ctx context.Context, id int64, status string) error {
	return dblock.DB(ctx, r.db).Table(r.tables.Orders).Where("id = ?", id).Update("status", status).Error
}

type refundRow struct {
	ID        int64
	OrderID   int64
	Amount    int64
	GatewayID string
	CreatedAt time.Time
}

// InsertRefund records a refund of order id.
func (r *Repository) InsertRefund(ctx context.Context, orderID, amount int64, gatewayID string) (Refund, error) {
	row := refundRow{OrderID: orderID, Amount: amount, GatewayID: gatewayID, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	if err := dblock.DB(ctx, r.db).Table(r.tables.Refunds).Create(&row).Error; err != nil {
		return Refund{}, err
	}
	return Refund{ID: row.ID, OrderID: row.OrderID, Amount: row.Amount, GatewayID: row.GatewayID, At: row.CreatedAt}, nil
}

// CountRefunds returns how many refunds order id has.
func (r *Repository) CountRefunds(ctx context.Context, orderID int64) (int64, error) {
	var n int64
	err := dblock.DB(ctx, r.db).Table(r.tables.Refunds).Where("order_id = ?", orderID).Count(&n).Error
	return n, err
}
