package main

import (
	"io"
	"net"
	"strings"
	"sync"
)

// proxy forwards TCP connections from 127.0.0.1 to the audit server (over TCP or its Unix
// socket), and can cut every open connection, as a network failure would.
type proxy struct {
	listener net.Listener
	target   string
	network  string

	mu    sync.Mutex
	conns map[net.Conn]bool
	// down refuses new connections (closes them at once), as a server that is away would.
	down bool
	wg   sync.WaitGroup
}

func newProxy(address string) (*proxy, error) {
	network, target := "tcp", address
	if path := strings.TrimPrefix(strings.TrimPrefix(address, "unix://"), "unix:"); path != address {
		network, target = "unix", path
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{listener: listener, target: target, network: network, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Address is where clients connect.
func (p *proxy) Address() string { return p.listener.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			client.Close()
			continue
		}
		server, err := net.Dial(p.network, p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client, server)
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

func (p *proxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = true
	}
}

func (p *proxy) pipe(to, from net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(to, from)
	to.Close()
	from.Close()
}

// Cut closes every open connection (new ones are still accepted) and returns how many client
// connections it cut.
func (p *proxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns) / 2
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	return n
}

// SetDown cuts every open connection and refuses new ones (down), or accepts them again.
func (p *proxy) SetDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
	if down {
		p.Cut()
	}
}

// Close stops accepting, cuts what is open and waits for the copying goroutines.
func (p *proxy) Close() {
	p.listener.Close()
	p.Cut()
	p.wg.Wait()
}
