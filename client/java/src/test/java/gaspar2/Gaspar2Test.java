package gaspar2;

import java.io.IOException;
import java.net.ConnectException;
import java.net.ServerSocket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

/**
 * Tests against a live server, run by "make test". GASPAR2_TEST_URL is HOST:PORT of a server
 * whose handler echoes every message, fails on "fail" and sleeps SECONDS on "pid:SECONDS"
 * (python -m gaspar2 serve tests.handlers:work, from the repository's root);
 * GASPAR2_TEST_URL6, if set, is the same on an IPv6 address, GASPAR2_TEST_UNIX on a unix
 * socket (unix:PATH) and GASPAR2_TEST_ABSTRACT on an abstract one (unix:@NAME), which this
 * client must refuse.
 */
final class Gaspar2Test {
    private static int passed;
    private static int failed;

    private interface Check {
        boolean run() throws Exception;
    }

    private static void check(String name, Check check) {
        boolean ok;
        try {
            ok = check.run();
        } catch (Exception e) {
            System.out.println("# " + e);
            ok = false;
        }
        System.out.println((ok ? "ok - " : "not ok - ") + name);
        if (ok) {
            passed++;
        } else {
            failed++;
        }
    }

    /** The class of the exception that a request throws, or null if it succeeds. */
    private static Class<?> failure(String url, String message, int timeoutMs) {
        try {
            Gaspar2.request(url, message, timeoutMs);
            return null;
        } catch (IOException | RuntimeException e) {
            return e.getClass();
        }
    }

    private static boolean echoes(String url, byte[] message) throws IOException {
        return Arrays.equals(Gaspar2.request(url, message, 30000), message);
    }

    public static void main(String[] args) throws IOException {
        String url = System.getenv("GASPAR2_TEST_URL");
        String url6 = System.getenv("GASPAR2_TEST_URL6");
        if (url == null || url.isEmpty()) {
            System.out.println("skipped: set GASPAR2_TEST_URL to HOST:PORT of a live test server");
            return;
        }
        check("VERSION is MAJOR.MINOR.PATCH", () -> Gaspar2.VERSION.matches("\\d+\\.\\d+\\.\\d+"));
        check("text is echoed", () -> Arrays.equals(Gaspar2.request(url, "hello", 30000),
                "hello".getBytes(StandardCharsets.UTF_8)));
        check("an empty message gets an empty reply", () -> echoes(url, new byte[0]));
        byte[] bytes = new byte[256 * 16];
        for (int i = 0; i < bytes.length; i++) {
            bytes[i] = (byte) i;
        }
        check("every byte value is echoed", () -> echoes(url, bytes));
        byte[] big = new byte[1 << 20];
        Arrays.fill(big, (byte) 'g');
        check("1 MiB is echoed", () -> echoes(url, big));
        check("a failure on the server is RequestFailed",
                () -> failure(url, "fail", 30000) == Gaspar2.RequestFailed.class);
        check("no reply within the timeout is SocketTimeoutException",
                () -> failure(url, "pid:0.5", 100) == SocketTimeoutException.class);
        int closedPort;
        try (ServerSocket closed = new ServerSocket(0)) {
            closedPort = closed.getLocalPort();
        }
        check("nothing listening is ConnectException",
                () -> failure("127.0.0.1:" + closedPort, "anyone?", 30000) == ConnectException.class);
        if (url6 != null && !url6.isEmpty()) {
            check("a bracketed IPv6 address", () -> Arrays.equals(Gaspar2.request(url6, "v6", 30000),
                    "v6".getBytes(StandardCharsets.UTF_8)));
        }
        String unix = System.getenv("GASPAR2_TEST_UNIX");
        if (unix != null && !unix.isEmpty()) {
            check("unix:PATH: a message is echoed", () -> echoes(unix, unix.getBytes(StandardCharsets.UTF_8)));
            check("unix:PATH: an empty message gets an empty reply", () -> echoes(unix, new byte[0]));
            check("unix:PATH: 1 MiB is echoed", () -> echoes(unix, big));
            check("unix:PATH: a failure on the server is RequestFailed",
                    () -> failure(unix, "fail", 30000) == Gaspar2.RequestFailed.class);
            check("unix:PATH: no reply within the timeout is SocketTimeoutException",
                    () -> failure(unix, "pid:0.5", 100) == SocketTimeoutException.class);
        }
        String abstractName = System.getenv("GASPAR2_TEST_ABSTRACT");
        if (abstractName != null && !abstractName.isEmpty()) {
            check("unix:@NAME is refused: Java cannot reach the abstract namespace",
                    () -> failure(abstractName, "hello", 30000) == UnsupportedOperationException.class);
        }
        Path dir = Files.createTempDirectory("gaspar2-test");
        check("a unix socket's file that is not there is ConnectException",
                () -> failure("unix:" + dir.resolve("none.sock"), "anyone?", 30000) == ConnectException.class);
        Files.delete(dir);
        check("a unix socket path too long for sockaddr_un is a SocketException",
                () -> failure("unix:/" + "x".repeat(200), "x", 30000) == java.net.SocketException.class);
        check("unix: with no path is IllegalArgumentException",
                () -> failure("unix:", "x", 30000) == IllegalArgumentException.class);
        System.out.println(passed + " passed, " + failed + " failed");
        if (failed > 0) {
            System.exit(1);
        }
    }
}
