"""Stand-in for ``rpicam-vid`` in the libcamera camera tests: the same command line, the
same output (raw I420 frames on stdout), made from real frames of a video file.

    python tests/fake_rpicam_vid.py --camera 0 -t 0 --codec yuv420 --width 640 \\
        --height 480 --framerate 30 -n --flush -o -

Environment: FAKE_RPICAM_VIDEO (required) the video to play, looped; FAKE_RPICAM_FRAMES
exit with status 1 after that many frames, like a camera whose cable came loose;
FAKE_RPICAM_NO_CAMERA print rpicam-vid's message for a missing camera and exit.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--camera", default="0")
    ap.add_argument("-t", dest="timeout", default="5000")
    ap.add_argument("--codec", default="h264")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--framerate", type=float, default=30.0)
    ap.add_argument("-n", dest="nopreview", action="store_true")
    ap.add_argument("--flush", action="store_true")
    ap.add_argument("-o", dest="output", required=True)
    args = ap.parse_args()
    if args.codec != "yuv420" or args.output != "-" or args.timeout != "0":
        print(f"ERROR: stand-in supports only -t 0 --codec yuv420 -o -, got {sys.argv[1:]}",
              file=sys.stderr)
        return 2
    if os.environ.get("FAKE_RPICAM_NO_CAMERA"):
        print("ERROR: *** no cameras available ***", file=sys.stderr)
        return 255
    limit = int(os.environ.get("FAKE_RPICAM_FRAMES", "0"))
    cap = cv2.VideoCapture(os.environ["FAKE_RPICAM_VIDEO"])
    out = sys.stdout.buffer
    sent = 0
    while True:
        ok, bgr = cap.read()
        if not ok:  # loop the clip
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = cap.read()
            if not ok:
                print("ERROR: cannot read the video", file=sys.stderr)
                return 3
        bgr = cv2.resize(bgr, (args.width, args.height), interpolation=cv2.INTER_AREA)
        try:
            out.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
            out.flush()
        except BrokenPipeError:  # the reader closed: stopped like rpicam-vid on SIGPIPE
            return 0
        sent += 1
        print(f"#{sent} (30.00 fps) exp 10000.00 ag 1.00 dg 1.00", file=sys.stderr)
        if limit and sent >= limit:
            print("ERROR: Device timeout detected, attempting a restart!!!", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
