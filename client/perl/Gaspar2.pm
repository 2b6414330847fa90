package Gaspar2;

# gaspar2 client for Perl: one request per connection, core modules only.
#
# The request is a 4-byte big-endian length and the payload; the reply is everything the
# server writes before closing. A failed request is a TCP reset, never an empty reply.
#
#     use Gaspar2 qw(request);
#     my $reply = request('127.0.0.1:10123', $bytes, timeout => 5);
#
# request() returns the reply (a byte string, possibly empty) or dies with one line:
# "HOST:PORT: connection reset: ..." when the request failed on the server, and with
# "connection refused" or "timed out" in it for those failures.

use strict;
use warnings;

use Carp qw(croak);
use Errno ();
use Exporter qw(import);
use IO::Select;
use IO::Socket::INET;
use Socket qw(SHUT_WR);
use Time::HiRes qw(time);

our $VERSION = '0.1.0';
our @EXPORT_OK = qw(request);

# $message is a byte string: encode text first (e.g. Encode::encode('UTF-8', $text)).
# timeout (seconds, fractions allowed) bounds the whole request; none or 0: no limit.
sub request {
    my ($url, $message, %opt) = @_;
    my ($host, $port) = $url =~ /^\[?(.*?)\]?:(\d+)\z/
        or croak "expected HOST:PORT, got '$url'";
    $host = '127.0.0.1' if $host eq '';
    my $timeout = $opt{timeout};
    my $deadline = $timeout ? time + $timeout : undef;
    $message = '' unless defined $message;
    utf8::downgrade($message, 1)
        or croak 'message has wide characters: encode it to bytes first';
    my $frame = pack 'N/a*', $message;

    # A reset while writing must be reported as an error, not kill the process.
    local $SIG{PIPE} = 'IGNORE';

    my $sock = IO::Socket::INET->new(
        PeerHost => $host,
        PeerPort => $port,
        Proto    => 'tcp',
        ($timeout ? (Timeout => $timeout) : ()),
    );
    if (!$sock) {
        die "$url: connection refused: is the server running?\n" if $!{ECONNREFUSED};
        die "$url: timed out after $timeout s\n" if $!{ETIMEDOUT} && $timeout;
        (my $why = $@) =~ s/^IO::Socket::INET: //;
        die "$url: cannot connect: $why\n";
    }
    # Non-blocking, so that every wait goes through select() and respects the deadline.
    $sock->blocking(0);
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
