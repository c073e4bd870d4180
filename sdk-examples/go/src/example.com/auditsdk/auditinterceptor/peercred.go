package auditinterceptor

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"google.golang.org/grpc/credentials"

	auditv1 "example.com/auditsdk/audit/v1"
)

// UnixPeerInfo is the AuthInfo of a connection accepted with PeerCredentials on a Unix socket:
// the kernel's credentials of the connecting process (SO_PEERCRED).
type UnixPeerInfo struct {
	credentials.CommonAuthInfo
	Peer *auditv1.UnixPeer
}

// AuthType is "unix-peercred".
func (UnixPeerInfo) AuthType() string { return "unix-peercred" }

// PeerCredentials are plaintext server transport credentials that read the kernel's peer
// credentials (uid, gid, pid, and the executable from /proc) of connections on a Unix socket,
// so the interceptor records a Unix caller as who it is, not as an empty address. TCP
// connections pass through unchanged, as with insecure credentials. Linux only.
//
//	server := grpc.NewServer(grpc.Creds(auditinterceptor.PeerCredentials()), ...)
func PeerCredentials() credentials.TransportCredentials { return peerCredentials{} }

type peerCredentials struct{}

func (peerCredentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, nil, nil
}

func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	unixConn, ok := conn.(*net.UnixConn)
	if !ok {
		return conn, nil, nil
	}
	raw, err := unixConn.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("reading peer credentials: %w", credErr)
	}
	binary, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cred.Pid))
	info := UnixPeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		Peer:           &auditv1.UnixPeer{Uid: cred.Uid, Gid: cred.Gid, Pid: uint32(cred.Pid), BinaryPath: binary},
	}
	return conn, info, nil
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (peerCredentials) Clone() credentials.TransportCredentials { return peerCredentials{} }

func (peerCredentials) OverrideServerName(string) error { return nil }
