// Package decorator adds txlock locks around plain service functions, so
// that service code stays plain Go and locking is declared where the
// service is wired.
//
// # Decorators
//
// [WithLock], [WithLockErr] and [WithLock0] take a function of one of the
// three shapes services have, func(ctx, Req) (Resp, error), func(ctx, Req)
// error and func(ctx) error, and return a function of the same signature
// that holds a lock for each call:
//
//	refund := decorator.WithLock(locker,
//		decorator.ResourceKey("order:", func(r RefundRequest) int64 { return r.OrderID }),
//		orders.Refund,
//		dblock.WaitTimeout(2*time.Second))
//
// The call runs inside the lock's transaction, which its ctx carries:
// repositories that get their handle with dblock.DB(ctx, db) write in it,
// and the writes commit with the release, or roll back when the call
// returns an error or panics. Decorated functions that call each other
// with the same ctx share that one transaction: their writes commit or
// roll back together, and a key already held by an outer call is taken
// again at once (reentrancy). An inner call's error rolls back only if it
// reaches the outermost call: an outer function that swallows it and
// returns nil commits the inner writes made so far.
//
// Lock options (dblock.WaitTimeout, dblock.NoWait, dblock.Retry, ...) are
// passed through. dblock.Shared() takes the key in shared mode: calls
// decorated with it hold a key together, for reading, and calls decorated
// without it (exclusive) wait for them all; an exclusive call inside a
// shared call of the same key and ctx fails with dblock.ErrUpgrade. Errors of the lock are dblock's sentinels, told apart
// with errors.Is (dblock.ErrNotAcquired, dblock.ErrDeadlock,
// dblock.ErrLockLost, dblock.ErrInvalidKey, ...); the service's own errors
// are returned unchanged, with its results. On an error of the lock or of
// the commit the results are zero: never those of a run that dblock.Retry
// rolled back before the attempt that failed.
//
// Nothing in this package panics on bad input: a nil Locker, key function
// or fn given to a decorator, Call or CallResult, and a key helper given
// nil, make every call return an error that names the function and what to
// pass.
//
// # Keys
//
// A [KeyFunc] computes a call's key from its context and request. There is
// a helper per granularity: [MethodKey] and [OperationKey] (fixed names),
// [ResourceKey] (a business object named by an id of the request), [UserKey]
// (a user id in the request), [UserFromContext] (the user that
// [ContextWithUser] put in the context), [GlobalKey], and [Compose] to
// combine them, e.g. user + resource. ResourceKey and UserKey take an id of
// any type that cmd/txlockgen takes in a placeholder, turned into text by
// the same rules (an integer in decimal, a time.Time as its instant in UTC,
// ...): ResourceKey("order:", func(r Req) int64 { return r.OrderID }). A
// KeyFunc that cannot compute its key (an empty id, no user) returns the
// zero key and the call fails with dblock.ErrInvalidKey rather than take a
// different lock than intended; the error says which helper and why
// ("decorator.WithLock: dblock: invalid key: ResourceKey("order:"): the id
// is empty").
//
// The helpers read an id's type once, when they are built; a call then
// converts the id (tens of nanoseconds) and costs a closure call over
// [dblock.Locker.Do].
//
// # Several parameters
//
// The decorators take the three shapes above. A function of another
// shape, several parameters for instance, needs no adapter struct: lock it
// with [Call] or [CallResult], whose fn is a closure over the arguments,
// and compute the key from them:
//
//	transfer := func(ctx context.Context, from, to, amount int64) (int64, error) {
//		return decorator.CallResult(ctx, locker, "Accounts.Transfer",
//			dblock.Resource("account:"+strconv.FormatInt(from, 10)),
//			func(ctx context.Context) (int64, error) { return accounts.Transfer(ctx, from, to, amount) })
//	}
//
// A key built by hand is used as given: rule out empty string ids before
// the call (dblock.Resource("account:"+"") is the valid key "account:"). A
// generated proxy (below) does that for methods of every shape.
//
// # Proxies
//
// For a service behind an interface, a proxy implements the interface by
// wrapping an implementation and locking some of its methods. The command
// github.com/txlock/txlock/cmd/txlockgen generates one from comment
// directives on the interface's methods:
//
//	type OrderService interface {
//		//txlock:lock resource=order:{OrderID} wait=2s
//		Refund(ctx context.Context, req RefundRequest) (Refund, error)
//		Get(ctx context.Context, id int64) (Order, error) // not locked: passed through
//	}
//
// Generated code calls [Call] and [CallResult]. Without code generation,
// write the proxy by hand: a struct that embeds the interface (the methods
// it does not override pass through) and overrides the methods to lock:
//
//	type lockedOrders struct {
//		OrderService // the implementation
//		locker *dblock.Locker
//	}
//
//	func (p lockedOrders) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
//		return decorator.CallResult(ctx, p.locker, "OrderService.Refund",
//			dblock.Resource("order:"+strconv.FormatInt(req.OrderID, 10)),
//			func(ctx context.Context) (Refund, error) { return p.OrderService.Refund(ctx, req) },
//			dblock.WaitTimeout(2*time.Second))
//	}
//
// [Call] (a method returning only an error) and [CallResult] (a method
// with results) name the method in errors of the lock ("OrderService.Refund:
// dblock: lock not acquired: ..."), which still match dblock's sentinels.
// CallResult returns the implementation's results only from the run that
// committed, or beside the implementation's own error: on an error of the
// lock or of the commit they are zero, also after a dblock.Retry whose
// earlier run was rolled back.
//
// Package github.com/txlock/txlock/decorator/wireset provides the Locker to
// google/wire injectors, which bind a service interface to its proxy with
// wire.Bind; this package does not import wire.
package decorator
