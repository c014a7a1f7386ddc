// Package other declares an interface with directives that package follow
// embeds.
package other

import (
	"context"
	"strconv"

	"github.com/txlock/txlock/dblock"
)

type Jobs interface {
	//txlock:lock resource=job:{name} nowait
	Job(ctx context.Context, name string) error

	//txlock:lock key=SweepKey
	Sweep(ctx context.Context, day int) error
}

// SweepKey is the key of a day's sweep.
func SweepKey(_ context.Context, day int) dblock.Key {
	return dblock.Resource("sweep:" + strconv.Itoa(day))
}

// Private has a key function that a proxy in another package cannot call.
type Private interface {
	//txlock:lock key=privateKey
	M(ctx context.Context, id string) error
}

func privateKey(_ context.Context, id string) dblock.Key { return dblock.Resource(id) }

var _ = privateKey
