#!/usr/bin/env perl
# gaspar2-request [--timeout SECONDS] HOST:PORT [MESSAGE]
#
# Sends MESSAGE (standard input when it is absent or "-") and writes the reply to standard
# output. On failure writes one line to standard error and exits 1.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;    # Gaspar2.pm sits next to this script
use Gaspar2 qw(request);

sub usage {
    print STDERR "usage: gaspar2-request [--timeout SECONDS] HOST:PORT [MESSAGE]\n";
    exit 2;
}

my %options;
if (@ARGV >= 2 && $ARGV[0] eq '--timeout') {
    my (undef, $seconds) = splice @ARGV, 0, 2;
    usage() unless $seconds =~ /^(?:\d+\.?\d*|\.\d+)\z/;
    $options{timeout} = $seconds;
}
usage() unless @ARGV == 1 || @ARGV == 2;
my ($url, $message) = @ARGV;

if (!defined $message || $message eq '-') {
    binmode STDIN;
    local $/;
    $message = <STDIN>;
    $message = '' unless defined $message;
}

my $reply = eval { request($url, $message, %options) };
if (!defined $reply) {
    (my $error = $@) =~ s/\s+\z//;
    print STDERR "gaspar2-request: $error\n";
    exit 1;
}
binmode STDOUT;
print $reply;
close STDOUT or do { print STDERR "gaspar2-request: stdout: $!\n"; exit 1 };
