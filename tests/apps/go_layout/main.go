// Prints, as Go itself lays them out, the struct offsets the agent follows: from a
// crypto/tls.Conn to its socket, and from a net/http.Request to its context. The agent's table
// (ddtrace-agent/src/integrations/go_layout.rs) is checked against this for the Go the tests run.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"reflect"
)

func offset(t reflect.Type, name string) (uintptr, reflect.Type) {
	field, ok := t.FieldByName(name)
	if !ok {
		panic(t.String() + " has no field " + name)
	}
	return field.Offset, field.Type
}

func main() {
	tlsConn, _ := offset(reflect.TypeOf((*tls.Conn)(nil)).Elem(), "conn")
	embedded, conn := offset(reflect.TypeOf((*net.TCPConn)(nil)).Elem(), "conn")
	fd, netFD := offset(conn, "fd")
	pfd, pollFD := offset(netFD.Elem(), "pfd")
	sysfd, _ := offset(pollFD, "Sysfd")
	unixEmbedded, _ := offset(reflect.TypeOf((*net.UnixConn)(nil)).Elem(), "conn")
	if unixEmbedded != embedded {
		panic("net.UnixConn and net.TCPConn embed conn differently")
	}
	requestCtx, _ := offset(reflect.TypeOf((*http.Request)(nil)).Elem(), "ctx")
	fmt.Printf("tls_conn_conn=%d conn_fd=%d netfd_sysfd=%d request_ctx=%d\n", tlsConn, embedded+fd, pfd+sysfd, requestCtx)
}
