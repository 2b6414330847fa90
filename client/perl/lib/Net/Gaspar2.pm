package Net::Gaspar2;

use strict;
use warnings;

use Carp qw(croak);
use Errno ();
use Exporter qw(import);
use IO::Select;
use IO::Socket::IP;
use IO::Socket::UNIX;
use Socket qw(AF_UNIX SHUT_WR SOCK_STREAM pack_sockaddr_un);
use Time::HiRes qw(time);

our $VERSION = '0.1.0';
our @EXPORT_OK = qw(request);

# The longest path a sockaddr_un holds, with its terminating NUL (Linux: 108 bytes).
use constant SUN_PATH_MAX => 108;

sub request {
    my ($url, $message, %opt) = @_;
    my ($host, $port, $path);
    if ($url =~ /^unix:(.*)\z/s) {
        $path = $1;
        croak "unix: needs a path or \@NAME, got '$url'" if $path eq '' || $path eq '@';
    }
    else {
        ($host, $port) = $url =~ /^\[?(.*?)\]?:(\d+)\z/
            or croak "expected HOST:PORT, unix:PATH or unix:\@NAME, got '$url'";
        $host = '127.0.0.1' if $host eq '';
    }
    my $timeout = $opt{timeout};
    my $deadline = $timeout ? time + $timeout : undef;
    $message = '' unless defined $message;
    utf8::downgrade($message, 1)
        or croak 'message has wide characters: encode it to bytes first';
    my $frame = pack 'N/a*', $message;

    # A reset while writing must be reported as an error, not kill the process.
    local $SIG{PIPE} = 'IGNORE';

    my $sock;
    if (defined $path) {
        $sock = _connect_unix($url, $path, $deadline, $timeout);
    }
    else {
        $sock = IO::Socket::IP->new(
            PeerHost    => $host,
            PeerService => $port,
            Type        => SOCK_STREAM,
            ($timeout ? (Timeout => $timeout) : ()),
        );
        if (!$sock) {
            die "$url: connection refused: is the server running?\n" if $!{ECONNREFUSED};
            die "$url: timed out after $timeout s\n" if $!{ETIMEDOUT} && $timeout;
            die "$url: cannot connect: $@\n";
        }
        # Non-blocking, so that every wait goes through select() and respects the deadline.
        $sock->blocking(0);
    }
    my $select = IO::Select->new($sock);

    my $sent = 0;
    while ($sent < length $frame) {
        my $n = syswrite $sock, $frame, length($frame) - $sent, $sent;
        if (defined $n) { $sent += $n } else { _wait($url, $select, 'can_write', $deadline, $timeout) }
    }
    shutdown $sock, SHUT_WR;    # half-close: the request is complete

    my $reply = '';
    while (1) {
        my $n = sysread $sock, $reply, 65536, length $reply;
        last if defined $n && $n == 0;    # orderly close: the reply is complete
        _wait($url, $select, 'can_read', $deadline, $timeout) unless defined $n;
    }
    close $sock;
    return $reply;
}

# A non-blocking unix socket connected to PATH, or to NAME in Linux's abstract namespace
# for "@NAME".
sub _connect_unix {
    my ($url, $path, $deadline, $timeout) = @_;
    my $abstract = $path =~ s/^@//;
    if (length($path) + 1 > SUN_PATH_MAX) {
        local $! = Errno::ENAMETOOLONG();
        die "$url: $!\n";
    }
    # An abstract name is a NUL and the name, as long as the name: no NUL may pad it, for
    # a padded name is another name.
    my $address = $abstract ? pack('S', AF_UNIX) . "\0" . $path : pack_sockaddr_un($path);
    my $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM)
        or die "$url: cannot create a socket: $!\n";
    $sock->blocking(0);
    until (connect $sock, $address) {
        # A file that is not there is refused too: nothing listens.
        die "$url: connection refused: is the server running?\n" if $!{ECONNREFUSED} || $!{ENOENT};
        # EAGAIN: the server's backlog is full; try again until the deadline, as a blocking
        # connect would wait for room.
        die "$url: cannot connect: $!\n" unless $!{EAGAIN} || $!{EINTR};
        die "$url: timed out after $timeout s\n" if defined $deadline && time >= $deadline;
        select undef, undef, undef, 0.01;
    }
    return $sock;
}

# After a sysread or syswrite failed: wait if it would have blocked, die otherwise.
sub _wait {
    my ($url, $select, $can, $deadline, $timeout) = @_;
    if ($!{EAGAIN} || $!{EWOULDBLOCK}) {
        my $left = defined $deadline ? $deadline - time : undef;
        die "$url: timed out after $timeout s\n" if defined $left && $left <= 0;
        $select->$can($left);    # the next sysread or syswrite tells what happened
    }
    elsif ($!{ECONNRESET} || $!{EPIPE}) {
        # EPIPE: the reset hit a write rather than a read; it means the same.
        die "$url: connection reset: the request failed on the server (see its log)\n";
    }
    elsif (!$!{EINTR}) {
        die "$url: $!\n";
    }
}

1;

__END__

=head1 NAME

Net::Gaspar2 - client for gaspar2 servers: one length-prefixed request per connection

=head1 SYNOPSIS

    use Net::Gaspar2 qw(request);

    my $reply = eval { request('127.0.0.1:10123', $bytes, timeout => 5) };
    if (!defined $reply) {
        die $@ unless $@ =~ /connection reset/;
        # the request failed on the server
    }

    # The same over a unix socket, or one in Linux's abstract namespace:
    $reply = request('unix:/run/gaspar2/gaspar2.sock', $bytes);
    $reply = request('unix:@gaspar2', $bytes);

=head1 DESCRIPTION

A gaspar2 server runs a handler on every core behind one TCP port or unix socket. Each
connection carries one request: a 4-byte big-endian length and the payload. The reply is
everything the server writes before closing, and may be empty; a failed request (the
handler raised, the worker died) is a connection reset, which this module reports as an
error, never as an empty reply.

The module uses only core modules (L<IO::Socket::IP>, so IPv6 addresses work as well as
IPv4 ones and host names; L<IO::Socket::UNIX> for unix sockets).

=head1 FUNCTIONS

=head2 request($url, $message, %options)

Sends C<$message> to the server at C<$url> and returns the reply, a byte string that may be
empty. C<$url> is C<HOST:PORT>, C<:PORT> for 127.0.0.1, C<[IPV6 ADDRESS]:PORT>,
C<unix:PATH> for a unix socket's file (a server started with C<--bind unix:PATH>), or
C<unix:@NAME> for a socket in Linux's abstract namespace (C<--bind unix:@NAME>). A
malformed C<$url> croaks.
C<$message> is a byte string: encode text first (for instance with
C<Encode::encode('UTF-8', $text)>); a string with wide characters croaks.

Options:

=over 4

=item timeout => SECONDS

Bounds the whole request (fractions allowed). None, or 0, means no limit.

=back

=head1 ERRORS

C<request> dies with one line ending in a newline, which starts with the URL and contains:

=over 4

=item C<connection reset>

The server reset the connection: the request failed there (its log says why). The handler
may have run, so retry only what is safe to run twice.

=item C<connection refused>

Nothing listens at that address: the request was not sent. A unix socket's file that is
not there is refused too.

=item C<timed out>

No complete reply within the timeout: the server may or may not have run it.

=back

Any other failure (an unknown host, an unreachable network, a unix socket's file that
this process may not open, a path longer than a C<sockaddr_un> holds) dies with the
system's reason.

=head1 SEE ALSO

The F<gaspar2-request> command that comes with this module; the gaspar2 server, a Python
package.

=head1 LICENSE

MIT. See the LICENSE file of the gaspar2 distribution.

=cut
