// Package imports declares, at package level, the names of the packages
// generated code imports: the generated file must import them under
// other names (see build_test.go).
package imports

import (
	stdctx "context"
	stdtime "time"

	txdblock "github.com/txlock/txlock/dblock"
)

var (
	dblock    = "not the package"
	decorator = 1
	strconv   = 2
	context   = 3
	time      = 4
	errors    = 5
	fmt       = 6
)

type Req struct {
	ID int64
	At stdtime.Time
}

type Service interface {
	//txlock:lock user=ctx resource=n:{ID} wait=1500ms
	Run(ctx stdctx.Context, r Req) (int, error)

	//txlock:lock resource=at:{At} nowait
	At(ctx stdctx.Context, r Req) error

	//txlock:lock key=keyOf
	Keyed(ctx stdctx.Context, id string) error
}

func keyOf(_ stdctx.Context, id string) txdblock.Key { return txdblock.Resource(id) }

var _ = []any{dblock, decorator, strconv, context, time, errors, fmt}
