package audit

import (
	"context"

	auditv1 "example.com/auditsdk/audit/v1"
)

// QueryOptions are the order, page size and limit of Client.Query. The zero value is oldest
// first, the server's page size, no limit.
type QueryOptions struct {
	// Order of the results (ascending by sequence when unset).
	Order auditv1.Order
	// PageSize is how many entries to ask for per page (0: the server's default).
	PageSize uint32
	// Limit stops after this many entries (0: no limit).
	Limit int
}

// Query returns an iterator over the entries matching filter (nil matches every entry),
// fetching pages as it goes and following page tokens until the last page or the limit:
//
//	entries := client.Query(ctx, &auditv1.Filter{Source: "billing-api"}, audit.QueryOptions{})
//	for entries.Next() {
//		fmt.Println(entries.Entry().GetSequence())
//	}
//	if err := entries.Err(); err != nil { ... }
//
// Each page is retried after UNAVAILABLE as Record is (a query has no side effect).
func (c *Client) Query(ctx context.Context, filter *auditv1.Filter, opts QueryOptions) *QueryIterator {
	return &QueryIterator{client: c, ctx: ctx, filter: filter, opts: opts}
}

// QueryPage fetches one page. Most callers want Query, which follows page tokens.
func (c *Client) QueryPage(ctx context.Context, request *auditv1.QueryRequest) (*auditv1.QueryResponse, error) {
	var response *auditv1.QueryResponse
	err := c.withRetry(ctx, "Query", func(ctx context.Context) (err error) {
		response, err = c.raw.Query(ctx, request)
		return err
	})
	return response, err
}

// QueryIterator walks the results of Client.Query, like bufio.Scanner: call Next until it
// returns false, then Err. Not safe for concurrent use.
type QueryIterator struct {
	client *Client
	ctx    context.Context
	filter *auditv1.Filter
	opts   QueryOptions

	page  []*auditv1.AuditEntry
	token string
	// last is set once the page without a next_page_token has been fetched.
	last  bool
	entry *auditv1.AuditEntry
	seen  int
	pages int
	err   error
}

// Next advances to the next entry, fetching the next page when needed. It returns false at
// the end of the results, at the limit, or after an error (see Err).
func (it *QueryIterator) Next() bool {
	it.entry = nil
	if it.opts.Limit > 0 && it.seen >= it.opts.Limit {
		return false
	}
	for len(it.page) == 0 {
		if it.last || it.err != nil {
			return false
		}
		response, err := it.client.QueryPage(it.ctx, &auditv1.QueryRequest{
			Filter:    it.filter,
			PageSize:  it.pageSize(),
			PageToken: it.token,
			Order:     it.opts.Order,
		})
		if err != nil {
			it.err = err
			return false
		}
		it.pages++
		it.page = response.GetEntries()
		it.token = response.GetNextPageToken()
		it.last = it.token == ""
	}
	it.entry, it.page = it.page[0], it.page[1:]
	it.seen++
	return true
}

// pageSize never asks for more than the limit still allows.
func (it *QueryIterator) pageSize() uint32 {
	if it.opts.Limit <= 0 {
		return it.opts.PageSize
	}
	remaining := uint32(it.opts.Limit - it.seen)
	if it.opts.PageSize == 0 || remaining < it.opts.PageSize {
		return remaining
	}
	return it.opts.PageSize
}

// Entry is the current entry, after Next returned true.
func (it *QueryIterator) Entry() *auditv1.AuditEntry { return it.entry }

// Err is the error that ended the iteration, nil at the end of the results.
func (it *QueryIterator) Err() error { return it.err }

// Pages is how many pages have been fetched so far.
func (it *QueryIterator) Pages() int { return it.pages }

// All consumes the iterator and returns every remaining entry.
func (it *QueryIterator) All() ([]*auditv1.AuditEntry, error) {
	var entries []*auditv1.AuditEntry
	for it.Next() {
		entries = append(entries, it.entry)
	}
	return entries, it.err
}
