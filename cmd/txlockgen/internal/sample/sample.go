// Package sample is the golden input of txlockgen: an interface that uses
// every kind of directive. Its generated proxy, service_txlock.go, is
// compiled with the module, tested against the server, and checked by the
// golden and regenerate-and-diff tests.
package sample

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/txlock/txlock/dblock"
)

//go:generate go run github.com/txlock/txlock/cmd/txlockgen -type Service

// Service is a service interface with locked and pass-through methods.
type Service interface {
	// Refund locks one order, named from a field of the request.
	//txlock:lock resource=order:{OrderID} wait=2s
	Refund(ctx context.Context, req RefundRequest) (Receipt, error)

	// Cancel locks the user of the context on one order.
	//txlock:lock user=ctx resource=order:{req.OrderID} nowait
	Cancel(ctx context.Context, req *CancelRequest) error

	// Transfer locks a user taken from a nested pointer field and an
	// operation.
	//txlock:lock user=From.ID operation=transfer
	Transfer(ctx context.Context, req *TransferRequest) (int64, time.Time, error)

	// Ship locks per shipment, with integers and a Stringer.
	//txlock:lock resource=ship:{id}:{region}:{wh}
	Ship(ctx context.Context, id int64, region Region, wh *Warehouse) error

	// Audit locks the method itself.
	//txlock:lock method wait=1500ms
	Audit(ctx context.Context) error

	// Rebuild locks everything.
	//txlock:lock global nowait
	Rebuild(ctx context.Context, tags ...string) (int, error)

	// Report computes its key with a function of the package.
	//txlock:lock key=reportKey
	Report(ctx context.Context, day Day, format string) ([]byte, error)

	// Renamed locks a method name of its own choosing, with a parameter
	// named after an import.
	//txlock:lock method=sample.Renamed resource=tenant:{strconv}
	Renamed(ctx context.Context, strconv string) error

	// Nightly is a scheduled job: it runs at most once an hour across
	// all processes, and a call still running after 30 s loses its lock.
	//txlock:lock operation=nightly mininterval=1h maxhold=30s
	Nightly(ctx context.Context) error

	// Lookup reads one order: any number of calls hold its key at once
	// (shared), none while a call locks it without shared (Refund).
	//txlock:lock shared resource=order:{id} wait=2s
	Lookup(ctx context.Context, id string) (Receipt, error)

	// Export runs at most 3 calls at once across all processes, one per
	// permit of the export semaphore: a fourth fails at once.
	//txlock:lock permits=3 operation=export nowait
	Export(ctx context.Context, format string) (int64, error)

	// Archive takes a permit of the same semaphore as Export, waiting up
	// to 5 s for one.
	//txlock:lock permits=3 operation=export wait=5s
	Archive(ctx context.Context, day Day) error

	// Get is not locked: the proxy passes it through.
	Get(ctx context.Context, id string) (Receipt, error)

	// Book locks a time slot: the same instant gives one key whatever
	// its zone or monotonic reading.
	//txlock:lock resource=slot:{At}
	Book(ctx context.Context, req BookRequest) error

	// Ping has no context and is not locked.
	Ping() bool

	// The methods of embedded interfaces are the service's: Store's
	// directives hold, io.Closer's Close is passed through.
	Store[Receipt]
	io.Closer
}

// Store is a generic interface whose directives hold in every interface
// that embeds an instance of it.
type Store[T any] interface {
	// Put locks the receipt it stores.
	//txlock:lock resource=receipt:{OrderID}
	Put(ctx context.Context, item T) error
}

// RefundRequest asks for the refund of an order.
type RefundRequest struct {
	OrderID string
	Amount  int64
}

// Receipt is the result of a refund.
type Receipt struct {
	OrderID string
	Amount  int64
}

// CancelRequest asks for the cancellation of an order.
type CancelRequest struct{ OrderID string }

// Account is a party of a transfer.
type Account struct{ ID string }

// TransferRequest moves money between accounts.
type TransferRequest struct {
	From   *Account
	To     *Account
	Amount int64
}

// Region is a shipping region. As an integer type, its key is its
// number, not its String.
type Region uint8

// String returns the region's name.
func (r Region) String() string { return "region-" + strconv.Itoa(int(r)) }

// BookRequest books a time slot.
type BookRequest struct{ At time.Time }

// Warehouse ships orders; its key is its String.
type Warehouse struct{ Site string }

// String returns the warehouse's site, empty when it has none.
func (w *Warehouse) String() string {
	if w.Site == "" {
		return ""
	}
	return "wh-" + w.Site
}

// Day is a calendar day.
type Day struct{ Year, Month, Day int }

// reportKey is the key of a report: one per day, none without a day.
func reportKey(_ context.Context, day Day, _ string) dblock.Key {
	if day == (Day{}) {
		return dblock.Key{}
	}
	return dblock.Resource(fmt.Sprintf("report:%04d-%02d-%02d", day.Year, day.Month, day.Day))
}
