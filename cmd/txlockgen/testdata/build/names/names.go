// Package names holds an interface whose parameter names, result types
// and package-level names collide with what generated code refers to
// (see build_test.go).
package names

import (
	"context"
	"unsafe"

	"github.com/txlock/txlock/dblock"
)

type Receipt struct{ OrderID string }

type RefundRequest struct{ OrderID string }

// res and p are named like locals of generated methods.
type res struct{ N int }

type p struct{}

type flag bool

var l = 1

func reportKey(_ context.Context, reportKey string) dblock.Key { return dblock.Resource(reportKey) }

type Service interface {
	// A parameter named like the result type (and the request type's
	// field path starts at it).
	//txlock:lock resource=order:{OrderID}
	Refund(ctx context.Context, Receipt RefundRequest) (Receipt, error)
	Peek(ctx context.Context, Receipt RefundRequest) (Receipt, error)

	// A parameter named like the key function.
	//txlock:lock key=reportKey
	Report(ctx context.Context, reportKey string) error

	// Types named like the locals.
	//txlock:lock method
	Results(ctx context.Context, res res, p p) (res, p, error)

	// Parameters named ctx (not first), l, err, key, inner, locker, v0, a1.
	//txlock:lock resource={ctx}:{l}:{err}:{v0}:{key}
	Named(c context.Context, ctx string, l string, err string, v0 int, inner, locker string, a1 bool, key int64) error

	//txlock:lock method
	Variadic(ctx context.Context, tags ...string) error

	//txlock:lock method
	Unnamed(context.Context, string, int, ...int) (int, error)

	//txlock:lock method
	Zero(ctx context.Context) error

	//txlock:lock method
	Three(ctx context.Context) (int, string, []byte, error)

	// Results of every kind: the early returns (no implementation, no
	// key) give their zero values.
	//txlock:lock method
	Kinds(ctx context.Context) (bool, flag, string, res, *p, []int, map[int]int, chan int, func(), any, struct{ N int }, [2]int, complex64, uintptr, unsafe.Pointer, error)
	PassKinds(ctx context.Context) (bool, res, [2]int, error)

	Pass(x int, ctx context.Context) (a, b int)
	PassNone()
}

var _ = l
