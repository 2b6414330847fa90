# Tests against a live server. GASPAR2_TEST_URL is HOST:PORT of a server whose handler
# echoes every message, fails on "fail" and sleeps SECONDS on "pid:SECONDS"
# (python -m gaspar2 serve tests.handlers:work, from the repository's root);
# GASPAR2_TEST_URL6, if set, is the same on an IPv6 address, GASPAR2_TEST_UNIX on a unix
# socket (unix:PATH) and GASPAR2_TEST_ABSTRACT on an abstract one (unix:@NAME).

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::IP;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Test::More;

use Net::Gaspar2 qw(request);

my $url = $ENV{GASPAR2_TEST_URL}
    or plan skip_all => 'set GASPAR2_TEST_URL to HOST:PORT of a live test server';

sub fails_with {
    my ($pattern, $name, @args) = @_;
    my $reply = eval { request(@args) };
    ok(!defined $reply && $@ =~ $pattern, $name) or diag($@ || 'a reply');
}

is(request($url, 'hello'), 'hello', 'text is echoed');
is(request($url, ''), '', 'an empty message gets an empty reply');
my $bytes = join '', map { chr } (0 .. 255) x 16;
is(request($url, $bytes), $bytes, 'every byte value is echoed');
my $big = 'gaspar2 ' x (1 << 17);
ok(request($url, $big, timeout => 30) eq $big, '1 MiB is echoed');

fails_with(qr/^\Q$url\E: connection reset/, 'a failure on the server is a reset', $url, 'fail');
fails_with(qr/timed out/, 'no reply within the timeout', $url, 'pid:0.5', timeout => 0.1);

# A bound port that does not listen refuses connections, and no one else can take it.
my $closed = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
    or die "bind: $@";
fails_with(qr/connection refused/, 'a port that does not listen is refused',
    '127.0.0.1:' . $closed->sockport, 'anyone?');

eval { request($url, "\x{263A}") };
like($@, qr/wide characters/, 'text with wide characters must be encoded first');

SKIP: {
    skip 'GASPAR2_TEST_URL6 is not set', 1 unless $ENV{GASPAR2_TEST_URL6};
    is(request($ENV{GASPAR2_TEST_URL6}, 'over IPv6'), 'over IPv6', 'a bracketed IPv6 address');
}

for my $at (grep { $_ } @ENV{qw(GASPAR2_TEST_UNIX GASPAR2_TEST_ABSTRACT)}) {
    is(request($at, "over $at"), "over $at", "$at: a message is echoed");
    is(request($at, ''), '', "$at: an empty message gets an empty reply");
    ok(request($at, $big, timeout => 30) eq $big, "$at: 1 MiB is echoed");
    fails_with(qr/^\Q$at\E: connection reset/, "$at: a failure on the server is a reset",
        $at, 'fail');
    fails_with(qr/timed out/, "$at: no reply within the timeout", $at, 'pid:0.5',
        timeout => 0.1);
}

my $dir = tempdir(CLEANUP => 1);
fails_with(qr/connection refused/, "a unix socket's file that is not there is refused",
    "unix:$dir/none.sock", 'anyone?');
# A socket file nobody listens on (bound, never listening) refuses connections.
my $stale = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => "$dir/stale.sock")
    or die "bind: $!";
fails_with(qr/connection refused/, 'a unix socket nobody listens on is refused',
    "unix:$dir/stale.sock", 'anyone?');
fails_with(qr/connection refused/, 'an abstract name nobody listens on is refused',
    "unix:\@gaspar2-test-nobody-$$", 'anyone?');
fails_with(qr/too long/, 'a path too long for a unix socket', 'unix:/' . 'x' x 200, 'x');
for my $bad ('unix:', 'unix:@', 'nowhere') {
    eval { request($bad, 'x') };
    like($@, qr/expected HOST:PORT|needs a path/, "'$bad' croaks");
}

done_testing();
