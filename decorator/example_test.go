package decorator_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strconv"
	"time"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
)

// RefundRequest and Refund are the request and response of a service
// method of the shape func(ctx, Req) (Resp, error).
type RefundRequest struct {
	OrderID string
	Amount  int64
}

type Refund struct {
	OrderID string
	Amount  int64
}

// Orders is a service whose code knows nothing of locks: its repository
// statements go through dblock.DB(ctx, db), so they run in the lock's
// transaction when there is one.
type Orders struct{ db *gorm.DB }

func (o *Orders) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	err := dblock.DB(ctx, o.db).Exec("UPDATE orders SET status = 'refunded' WHERE id = ? AND status = 'paid'", req.OrderID).Error
	return Refund{OrderID: req.OrderID, Amount: req.Amount}, err
}

// openLocker stands for the service's own setup.
func openLocker() (*gorm.DB, *dblock.Locker) {
	db, err := gorm.Open(mysql.Open("root@tcp(127.0.0.1:3306)/test"), &gorm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	locker, err := dblock.New(db)
	if err != nil {
		log.Fatal(err)
	}
	return db, locker
}

// The shape func(ctx, Req) (Resp, error): one lock per order, computed from
// the request.
func ExampleWithLock() {
	db, locker := openLocker()
	orders := &Orders{db: db}

	refund := decorator.WithLock(locker,
		decorator.ResourceKey("order:", func(r RefundRequest) string { return r.OrderID }),
		orders.Refund,
		dblock.WaitTimeout(2*time.Second))

	r, err := refund(context.Background(), RefundRequest{OrderID: "42", Amount: 1500})
	switch {
	case errors.Is(err, dblock.ErrNotAcquired):
		fmt.Println("order 42 is busy, try again")
	case err != nil:
		fmt.Println("refund failed:", err) // the service's own error, unchanged
	default:
		fmt.Println("refunded", r.Amount)
	}
}

// Readers and writers of one order: calls decorated with dblock.Shared()
// hold the order's key together, a refund (decorated without it) waits
// until no read holds it and holds it alone.
func ExampleWithLock_shared() {
	db, locker := openLocker()
	orders := &Orders{db: db}
	key := decorator.ResourceKey("order:", func(r RefundRequest) string { return r.OrderID })

	status := decorator.WithLock(locker, key, func(ctx context.Context, r RefundRequest) (string, error) {
		var s string
		err := dblock.DB(ctx, db).Raw("SELECT status FROM orders WHERE id = ?", r.OrderID).Scan(&s).Error
		return s, err
	}, dblock.Shared())
	refund := decorator.WithLock(locker, key, orders.Refund)

	if s, err := status(context.Background(), RefundRequest{OrderID: "42"}); err == nil && s == "paid" {
		if _, err := refund(context.Background(), RefundRequest{OrderID: "42", Amount: 1500}); err != nil {
			fmt.Println("refund failed:", err)
		}
	}
}

type WithdrawRequest struct {
	UserID string
	Amount int64
}

// The shape func(ctx, Req) error: one lock per user, taken from the
// request; UserFromContext takes it from the context instead.
func ExampleWithLockErr() {
	db, locker := openLocker()
	withdraw := func(ctx context.Context, req WithdrawRequest) error {
		res := dblock.DB(ctx, db).Exec("UPDATE wallets SET balance = balance - ? WHERE user_id = ? AND balance >= ?", req.Amount, req.UserID, req.Amount)
		if res.Error == nil && res.RowsAffected == 0 {
			return errors.New("insufficient funds")
		}
		return res.Error
	}

	locked := decorator.WithLockErr(locker,
		decorator.UserKey(func(r WithdrawRequest) string { return r.UserID }),
		withdraw)
	if err := locked(context.Background(), WithdrawRequest{UserID: "u-7", Amount: 30}); err != nil {
		fmt.Println(err)
	}
}

// The shape func(ctx) error: a job that at most one process runs at a
// time; NoWait makes the others skip instead of queueing.
func ExampleWithLock0() {
	_, locker := openLocker()
	nightly := func(ctx context.Context) error {
		// ... the job, writing through dblock.DB(ctx, db) ...
		return nil
	}

	job := decorator.WithLock0(locker, decorator.GlobalKey, nightly, dblock.NoWait())
	switch err := job(context.Background()); {
	case errors.Is(err, dblock.ErrNotAcquired):
		fmt.Println("another process is running the job: skipped")
	case err != nil:
		fmt.Println("job failed:", err)
	}
}

// Compose combines granularities: the user of the context, on one order.
func ExampleCompose() {
	db, locker := openLocker()
	orders := &Orders{db: db}

	key := decorator.Compose(
		decorator.UserFromContext,
		decorator.ResourceKey("order:", func(r RefundRequest) string { return r.OrderID }))
	refund := decorator.WithLock(locker, key, orders.Refund)

	ctx := decorator.ContextWithUser(context.Background(), "u-7")
	_, err := refund(ctx, RefundRequest{OrderID: "42"}) // holds user="u-7" resource="order:42"
	fmt.Println(err)
}

// OrderService is a service interface that callers depend on.
type OrderService interface {
	Refund(ctx context.Context, req RefundRequest) (Refund, error)
	Status(ctx context.Context, orderID string) (string, error)
}

// lockedOrders is a hand-written static proxy, for code that does not use
// cmd/txlockgen: it embeds the interface, so the methods it does not
// override (Status) go straight to the implementation, and overrides the
// ones to lock.
type lockedOrders struct {
	OrderService
	locker *dblock.Locker
}

// Refund holds order:<id> for the call. CallResult returns the
// implementation's result only from the run that committed (or with the
// implementation's own error), never beside an error of the lock.
func (p lockedOrders) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	return decorator.CallResult(ctx, p.locker, "OrderService.Refund", dblock.Resource("order:"+req.OrderID),
		func(ctx context.Context) (Refund, error) { return p.OrderService.Refund(ctx, req) },
		dblock.WaitTimeout(2*time.Second))
}

// A hand-written static proxy: a struct embedding the service interface,
// overriding the methods to lock. cmd/txlockgen generates the same from
// comment directives on the interface.
func Example_staticProxy() {
	db, locker := openLocker()
	var impl OrderService = orderService{&Orders{db: db}}

	var svc OrderService = lockedOrders{OrderService: impl, locker: locker}
	_, err := svc.Refund(context.Background(), RefundRequest{OrderID: "42"})
	fmt.Println(err)
}

type orderService struct{ *Orders }

func (orderService) Status(context.Context, string) (string, error) { return "paid", nil }

// Accounts is a service whose methods take several parameters.
type Accounts struct{ db *gorm.DB }

// Transfer moves amount from one account to another and returns the
// balance left on from.
func (a *Accounts) Transfer(ctx context.Context, from, to, amount int64) (int64, error) {
	db := dblock.DB(ctx, a.db)
	if err := db.Exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", amount, from).Error; err != nil {
		return 0, err
	}
	if err := db.Exec("UPDATE accounts SET balance = balance + ? WHERE id = ?", amount, to).Error; err != nil {
		return 0, err
	}
	var left int64
	return left, db.Raw("SELECT balance FROM accounts WHERE id = ?", from).Scan(&left).Error
}

// Close closes an account of a user.
func (a *Accounts) Close(ctx context.Context, userID, accountID string) error {
	return dblock.DB(ctx, a.db).Exec("UPDATE accounts SET closed = 1 WHERE id = ? AND owner = ?", accountID, userID).Error
}

// A function of several parameters, locked by hand: no adapter struct,
// CallResult runs a closure over the arguments, and the key is computed
// from them with dblock's constructors. An integer id is written in
// decimal, as ResourceKey and cmd/txlockgen write it.
func ExampleCallResult() {
	db, locker := openLocker()
	accounts := &Accounts{db: db}

	transfer := func(ctx context.Context, from, to, amount int64) (int64, error) {
		return decorator.CallResult(ctx, locker, "Accounts.Transfer",
			dblock.Resource("account:"+strconv.FormatInt(from, 10)),
			func(ctx context.Context) (int64, error) { return accounts.Transfer(ctx, from, to, amount) },
			dblock.WaitTimeout(2*time.Second))
	}

	left, err := transfer(context.Background(), 1, 2, 500)
	fmt.Println(left, err)
}

// Call is CallResult for a function that returns only an error. A key
// built by hand is used as given: rule out empty ids first, or
// dblock.Resource("account:"+"") would lock "account:", one key for every
// call without an id.
func ExampleCall() {
	db, locker := openLocker()
	accounts := &Accounts{db: db}

	closeAccount := func(ctx context.Context, userID, accountID string) error {
		if userID == "" || accountID == "" {
			return fmt.Errorf("Accounts.Close: %w: want a user and an account id", dblock.ErrInvalidKey)
		}
		return decorator.Call(ctx, locker, "Accounts.Close",
			dblock.Key{User: userID, Resource: "account:" + accountID},
			func(ctx context.Context) error { return accounts.Close(ctx, userID, accountID) })
	}

	fmt.Println(closeAccount(context.Background(), "u-7", "a-1"))
}
