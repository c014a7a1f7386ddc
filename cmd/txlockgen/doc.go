// Command txlockgen generates a locking proxy for a Go service interface:
// a type that implements the interface by wrapping an implementation,
// holding a txlock lock around the methods marked with a directive and
// passing the others straight through.
//
// In a module of your own, add it as a tool once (go get -tool records it
// in go.mod; it then runs at the txlock version the module requires, the
// one the generated code compiles against):
//
//	go get -tool github.com/txlock/txlock/cmd/txlockgen
//
// and run it with go:generate next to the interface:
//
//	//go:generate go tool txlockgen -type OrderService
//
// For an interface OrderService it writes orderservice_txlock.go with:
//
//	type LockedOrderServiceInner interface{ OrderService }  // what the proxy wraps
//	type LockedOrderService struct{ ... }                   // implements OrderService
//	func NewLockedOrderService(inner LockedOrderServiceInner, locker *dblock.Locker) *LockedOrderService
//
// LockedOrderServiceInner is a distinct type so that a dependency injector
// (google/wire) can bind OrderService to *LockedOrderService and
// LockedOrderServiceInner to the implementation without a cycle. Any
// OrderService implementation is a LockedOrderServiceInner. The
// constructor does not panic: given a nil inner (or locker), the proxy's
// methods that return an error say so at each call ("OrderService.Refund:
// no implementation: NewLockedOrderService was given a nil inner; ...");
// a method that returns no error cannot, and calls the nil inner.
//
// A locked method holds its key for the call and runs the implementation
// inside the lock's transaction, carried by its ctx (see package
// github.com/txlock/txlock/decorator, whose Call and CallResult the
// generated code uses): repositories that use dblock.DB(ctx, db) write in
// it, and the writes commit with the release, or roll back when the method
// returns an error. An error of the lock starts with the method's name
// ("OrderService.Refund: dblock: lock not acquired: ...") and matches
// dblock's sentinels with errors.Is; the method's results are then zero,
// never those of an attempt that a dblock.Retry (set with dblock.Defaults)
// rolled back. The implementation's own errors pass unchanged, with its
// results. The generated code is plain Go: no reflection at call time.
//
// # Flags
//
//	-type name    the interface, declared in the package of -dir (required)
//	-output file  the output file (default <lower(type)>_txlock.go, in -dir)
//	-name name    the proxy type (default Locked<type>)
//	-dir dir      the package directory (default ".")
//
// # Directives
//
// A method is locked by a line comment directly in its doc comment, with no
// space after the slashes:
//
//	type OrderService interface {
//		// Refund refunds a paid order.
//		//txlock:lock resource=order:{OrderID} wait=2s
//		Refund(ctx context.Context, req RefundRequest) (Refund, error)
//
//		//txlock:lock user=ctx resource=order:{req.OrderID} nowait
//		Cancel(ctx context.Context, req CancelRequest) error
//
//		//txlock:lock key=reportKey
//		Report(ctx context.Context, day time.Time) error
//
//		// Get is not locked: the proxy passes it through.
//		Get(ctx context.Context, id string) (Order, error)
//	}
//
// The directive is //txlock:lock followed by space-separated terms. Key
// terms name the granularities of the key; several combine into one key
// ("user u-7 on order 42"):
//
//	global             the one system-wide key (alone)
//	method             the method's name, "OrderService.Refund"
//	method=NAME        a method name of your choice
//	operation=NAME     a kind of action, e.g. operation=refund
//	resource=TEMPLATE  a business object computed from the request
//	user=TEMPLATE      a user id computed from the request
//	user=ctx           the user id that decorator.ContextWithUser put in ctx
//	key=FUNC           a function of the package computing the whole key:
//	                   func(ctx context.Context, <the method's other parameters>) dblock.Key
//
// A TEMPLATE is a PATH, or text with {PATH} placeholders
// ("order:{OrderID}", "{Tenant}/{OrderID}"). A PATH is a dotted selector of
// fields and methods without arguments: when its first element names a
// parameter it starts there (req.OrderID, id), otherwise at the first
// parameter after ctx, the request (OrderID means req.OrderID). The value
// at the end must be a string (or a string type), an integer, a time.Time,
// or have a String() string method (see "What a placeholder locks on").
//
// Option terms are passed to the acquisition:
//
//	shared             dblock.Shared: the key is taken in shared mode, held
//	                   by any number of shared calls at once and by none
//	                   while an exclusive call (without shared) holds it;
//	                   e.g. //txlock:lock shared resource=doc:{ID} for the
//	                   readers of a document whose writers lock it without
//	                   shared
//	permits=N          dblock.Permits(N): a counting semaphore: at most N
//	                   calls hold the key at once, across all processes,
//	                   each one of its N permits (N from 1 to
//	                   dblock.MaxPermits); e.g. //txlock:lock permits=5
//	                   operation=export
//	wait=DURATION      dblock.WaitTimeout, e.g. wait=2s or wait=250ms
//	nowait             dblock.NoWait: fail at once when the key is held
//	maxhold=DURATION   dblock.MaxHold: the lock is taken away from a call
//	                   still holding it after DURATION, e.g. maxhold=30s
//	mininterval=DURATION
//	                   dblock.MinInterval: the method runs at most once per
//	                   DURATION across all processes (others get
//	                   dblock.ErrTooSoon), e.g. mininterval=1h
//
// shared cannot be combined with mininterval (a scheduled job runs
// alone), nor permits with shared or mininterval. An exclusive method of
// a key called inside a shared method of the same key (the same ctx, so
// the same transaction) fails with dblock.ErrUpgrade: lock the outer
// method without shared.
//
// With permits=N, a call beyond the N holders waits for a permit (wait=,
// the context's deadline) or, with nowait, fails at once with
// dblock.ErrNotAcquired. N is the key's: every method (and every other
// user) of one key must give the same N, or its calls fail with
// dblock.ErrPermits; generation refuses two methods whose key terms are
// written alike with different N. A semaphore is apart from the key's lock:
// a method of the key without permits neither waits for the permit holders
// nor excludes them.
//
// A locked method must take a context.Context first and return an error
// last. A key that cannot be computed at call time, from an empty string,
// a nil pointer on the path, a zero time.Time, an empty String(), a ctx
// without a user, or a key function that returns the zero key, fails the
// call with an error wrapping dblock.ErrInvalidKey that names the method,
// the term and the value ("OrderService.Refund: dblock: invalid key:
// resource: req.OrderID is empty"), and the implementation is not called.
// Key text cannot contain '=': it is the
// mark of a missing space ("resource=order:{OrderID}wait=2s"), and fails
// the generation.
//
// # What a placeholder locks on
//
// decorator.ResourceKey and decorator.UserKey turn an id into text by the
// same rules, at run time (a test runs both on the same values):
//
//   - a string type: its bytes, even when the type has a String method;
//   - an integer type: its number in decimal ("42"), even when the type has
//     a String method (an enum named Region with String "eu" locks on its
//     number, which does not change when a name does); time.Duration is an
//     integer: its nanoseconds;
//   - time.Time, or *time.Time: the instant in UTC, RFC 3339 with
//     nanoseconds and trailing zeros dropped ("2024-02-29T08:30:00.5Z"), so
//     one instant gives one key whatever its zone or monotonic reading;
//   - any other type with a String() string method: what String returns,
//     except for a type that embeds a time.Time (directly or through
//     embedded structs), which is refused: its String may be time.Time's,
//     promoted, and the runtime cannot tell (name the time.Time field
//     instead).
//
// # Embedded and defined interfaces
//
// The methods an interface gets by embedding other interfaces (generic
// ones such as Repo[Order] too, and those of other packages), or by being
// defined from one (type Service Base), take the directives of their
// declarations: txlockgen reads the declarations of every interface it
// follows (the standard library's carry none and are read from their
// types). A method declared more than once (through two embedded
// interfaces, or redeclared next to the interface that embeds it) needs
// the same directive over the same parameter names on every declaration,
// or none on any: otherwise which declaration Go picks would decide
// whether it is locked, and the generation fails. A key=FUNC
// function is looked up in the package that declares the method: an
// exported function when that is another package than the proxy's.
// Directives on the embedding line itself are refused.
//
// # Errors
//
// Bad directives fail the generation with file:line and what is wrong: an
// unknown term or granularity, a missing key or key function, a locked
// method without ctx first or error last, a path that names no field or
// leads to a value that cannot be a key, conflicting terms, '=' in key
// text, a directive outside a method's doc comment, declarations of one
// method that disagree. So does a comment that looks like a directive but
// is not one, which would otherwise leave its method unlocked without a
// word: "// txlock:lock" (a space after the slashes), "/*txlock:lock*/",
// "//TXLOCK:lock" and the like; the message gives the directive to write.
// Only the declarations of the interface and of those it follows are
// read: in a grouped declaration, type ( A ...; B ... ), generating A
// does not read B.
//
// # Names
//
// Generated code builds whatever names the package and the interface use.
// A parameter keeps its name unless the generated code needs that name for
// something else: a type or function of the package (a parameter named
// Receipt in a method returning Receipt, one named like its key function),
// an import, a predeclared identifier or a local of the generated method;
// it is then renamed aN (with underscores when needed), and the locals
// (p, ctx, res, err, key) take an underscore when the package declares
// their names. The imports are renamed (dblock2, decorator2, fmt2, ...)
// when the package declares their names at package level. A package that
// declares one of the predeclared identifiers the generated code uses
// (error, false, nil, string, int64, uint64, true) is refused.
//
// # Output
//
// The output starts with "// Code generated by txlockgen. DO NOT EDIT.",
// is gofmt'd and deterministic: methods in name order, the same input
// always gives the same bytes. A stale output file is ignored when the
// package is loaded, so regeneration works even when it no longer
// compiles.
package main
