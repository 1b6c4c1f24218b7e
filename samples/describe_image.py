"""Describe an image with a vision model (Gemma 3 4B+ or Gemma 3n checkpoint folder).

    python samples/describe_image.py MODEL_FOLDER photo.jpg ["What is written on the sign?"]
    python samples/describe_image.py "" photo.jpg    # the bundled model: shows the error you get

Wide or tall photos are pan-and-scanned: the whole image plus crops, so small text survives.
The bundled Gemma 3 270M has no vision encoder; with it this sample shows the error you get.
"""
import sys

import mmsdk

model = (sys.argv[1] or None) if len(sys.argv) > 1 else None  # "" or nothing: the bundled model
image = sys.argv[2] if len(sys.argv) > 2 else "photo.jpg"
prompt = sys.argv[3] if len(sys.argv) > 3 else "Describe this image."

asst = mmsdk.load(model)
print(asst.info)
try:
    print(asst.describe_image(image, prompt, max_tokens=200))
except mmsdk.UnsupportedModalityError as e:
    print(f"this model cannot see images: {e}")
except mmsdk.InputError as e:
    print(f"cannot use that image: {e}")
